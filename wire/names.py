"""Protocol version, channel and request names, limits, and the originator format."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

PROTOCOL_VERSION = 2
"""2 adds ``hello.instance``/``hello.slot`` and the broker's ``placement`` message (which
replica a tunnel reached); a broker still serves protocol 1 gateways, without them."""
SUPPORTED_PROTOCOLS: frozenset[int] = frozenset({1, 2})

BROKER_USERNAME = "hoshu-broker"
"""The user name the broker logs in with on the reverse connection."""

CONTROL_SUBSYSTEM = "hoshu-control"
"""The session subsystem carrying control messages (JSON lines)."""

MAX_MESSAGE_BYTES = 256 * 1024
"""Longest control line either side accepts, newline included."""

MAX_AUDIT_BATCH = 200
MAX_INSTRUMENTS = 512
MAX_WINDOWS = 256

FORWARDED_EVENT_TYPES: frozenset[str] = frozenset(
    {
        "gateway.channel_opened",
        "gateway.channel_refused",
        "gateway.channel_closed",
        "gateway.paused",
        "gateway.resumed",
        "gateway.inventory",
    }
)
"""Event types a gateway may forward; the broker drops any other type."""


class Mode(StrEnum):
    ALWAYS = "always"  # hold the tunnel permanently (unless paused)
    WINDOW_ONLY = "window-only"  # hold it only inside approved grant windows


class Purpose(StrEnum):
    TUNNEL = "tunnel"  # a connection that carries instrument channels
    CHECK = "check"  # a short window-only check: hello, audit, windows, bye


# The one definition of hoshu's names, imported by the broker and the gateway
# (wire imports nothing of ours, so it lives here).  ASCII only and always
# ``fullmatch``: no trailing newline, no leading '-', no Unicode look-alikes.
NAME_PATTERN = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", re.ASCII)
"""Instruments, gateways, organisations: DNS-label style, 1-63, no leading or trailing '-'."""
USERNAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}", re.ASCII)
"""People: lower case letters, digits, '.', '_' or '-', 1-63, starting with a letter or digit."""


def valid_name(name: str) -> bool:
    """True for an instrument, gateway or organisation name (see :data:`NAME_PATTERN`)."""
    return isinstance(name, str) and NAME_PATTERN.fullmatch(name) is not None


def valid_username(name: str) -> bool:
    """True for a person's login name (see :data:`USERNAME_PATTERN`)."""
    return isinstance(name, str) and USERNAME_PATTERN.fullmatch(name) is not None


_ORIG_PREFIX = "hoshu1"
_SESSION_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ENGINEER_RE = re.compile(r"[A-Za-z0-9._@-]{1,64}")


@dataclass(frozen=True, slots=True)
class Originator:
    """Who a ``direct-tcpip`` channel is for: the broker session id and engineer name."""

    session_id: str
    engineer: str


def encode_originator(o: Originator) -> str:
    """The ``orig_host`` string the broker sends: ``hoshu1:<session_id>:<engineer>``.

    Raises ValueError for ids outside ``[A-Za-z0-9_-]{1,64}`` or names outside
    ``[A-Za-z0-9._@-]{1,64}``.
    """
    if not _SESSION_RE.fullmatch(o.session_id) or not _ENGINEER_RE.fullmatch(o.engineer):
        raise ValueError("session id or engineer name has characters the wire does not carry")
    return f"{_ORIG_PREFIX}:{o.session_id}:{o.engineer}"


def decode_originator(orig_host: str) -> Originator | None:
    """The originator encoded in ``orig_host``, or None when it is not in that form."""
    parts = orig_host.split(":")
    if len(parts) != 3 or parts[0] != _ORIG_PREFIX:
        return None
    if not _SESSION_RE.fullmatch(parts[1]) or not _ENGINEER_RE.fullmatch(parts[2]):
        return None
    return Originator(parts[1], parts[2])


# Instrument protocols both sides accept in allowlists and the instrument registry.
INSTRUMENT_PROTOCOLS: frozenset[str] = frozenset(
    {"ssh", "sftp", "rdp", "vnc", "http", "https", "hl7", "tcp"}
)

# Cipher preference on the tunnel: AES-GCM runs in OpenSSL (hardware AES), far
# cheaper per packet in asyncssh than chacha20-poly1305, which stays as fallback.
TUNNEL_CIPHERS: tuple[str, ...] = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
)
TUNNEL_WINDOW = 8 * 1024 * 1024  # SSH channel window on the tunnel, bytes
