"""hoshu-gateway: the hospital-side, outbound-only connector.

The gateway dials out to the broker and runs the SSH *server* side of a
reverse SSH connection.  It opens a TCP connection to an instrument only when
the broker asks for a host and port on the hospital's own allowlist, and only
while not paused (and, in window-only mode, only inside an approved window).

Errors: one tree, drawn in :mod:`gateway.errors`.
"""

__version__ = "0.1.0"
