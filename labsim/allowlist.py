"""Render the gateway's allowlist for a set of simulated instruments.

The gateway reads ``[[instrument]]`` tables with ``name``, ``host``, ``ports``
(a list of integers), ``protocol``, ``department`` and ``model``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from labsim.model import Instrument


def _toml_str(value: str) -> str:
    # A JSON string literal is a valid TOML basic string (same escapes).
    return json.dumps(value, ensure_ascii=True)


GATEWAY_PROTOCOLS = {"hl7-mllp": "hl7", "rfb": "vnc", "astm": "tcp"}


def render_allowlist_toml(
    instruments: Iterable[Instrument], *, include_host_keys: bool = False
) -> str:
    """TOML text with one ``[[instrument]]`` table per instrument, in the given order.

    With `include_host_keys`, SSH instruments also carry
    ``host_key_fingerprint = "SHA256:..."``.
    """
    out = ["# hoshu gateway allowlist: simulated laboratory", ""]
    # the gateway's protocol vocabulary (what a hospital's firewall team names)
    for inst in instruments:
        out += [
            "[[instrument]]",
            f"name = {_toml_str(inst.name)}",
            f"host = {_toml_str(inst.host)}",
            "ports = [" + ", ".join(str(int(p)) for p in inst.ports) + "]",
            f"protocol = {_toml_str(GATEWAY_PROTOCOLS.get(inst.protocol, inst.protocol))}",
            f"department = {_toml_str(inst.department)}",
            f"model = {_toml_str(inst.model)}",
        ]
        if include_host_keys and inst.host_key_fingerprint:
            out.append(f"host_key_fingerprint = {_toml_str(inst.host_key_fingerprint)}")
        out.append("")
    return "\n".join(out)
