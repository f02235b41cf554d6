"""Gateway configurations the tests start from."""

from __future__ import annotations

# every check passes it (a repeated port is folded); tests change one line to break it
GOOD = """
[gateway]
name = "gw1"
state_dir = "/var/lib/hoshu-gateway"
mode = "window-only"
[[instrument]]
name = "cobas-c503-1"
host = "10.0.0.5"
ports = [22, 22, 443]
protocol = "ssh"
"""
