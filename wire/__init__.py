"""The gateway <-> broker contract: names, protocol version, message models.

Imports nothing of hoshu's.  Gateways in hospitals are upgraded more slowly
than the broker, so every change here is versioned and snapshot-tested
(``tests/wire/schema_snapshot.json``; regenerate with ``python -m wire.schema``).
``wire.transport`` holds the one piece of plumbing both ends share: the
write-coalescing transport they install on their SSH connections.

The tunnel: the gateway dials out and runs the SSH *server* side of a reverse
SSH connection; the broker is the SSH *client*.  The broker logs in as
:data:`BROKER_USERNAME` with its pinned key, opens one session channel with
the subsystem :data:`CONTROL_SUBSYSTEM` (JSON lines, see :mod:`wire.codec`)
and ``direct-tcpip`` channels to instruments, naming the engineer's session in
``orig_host`` (:func:`encode_originator`).

Error tree::

    WireError
    ├── MessageTooLarge      a line longer than MAX_MESSAGE_BYTES
    ├── MalformedMessage     not JSON, not an object, or fields that do not validate
    └── UnknownMessageType   a well-formed message of a type this side does not know
"""

from wire.codec import LineFramer, decode, encode
from wire.errors import MalformedMessage, MessageTooLarge, UnknownMessageType, WireError
from wire.models import (
    Ack,
    AuditBatch,
    Bye,
    ErrorMessage,
    GatewayRecord,
    Heartbeat,
    Hello,
    Inventory,
    InventoryItem,
    Message,
    Placement,
    Welcome,
    Window,
    Windows,
)
from wire.names import (
    BROKER_USERNAME,
    CONTROL_SUBSYSTEM,
    FORWARDED_EVENT_TYPES,
    MAX_AUDIT_BATCH,
    MAX_INSTRUMENTS,
    MAX_MESSAGE_BYTES,
    MAX_WINDOWS,
    PROTOCOL_VERSION,
    SUPPORTED_PROTOCOLS,
    Mode,
    Originator,
    Purpose,
    decode_originator,
    encode_originator,
)

__all__ = [
    "BROKER_USERNAME",
    "CONTROL_SUBSYSTEM",
    "FORWARDED_EVENT_TYPES",
    "MAX_AUDIT_BATCH",
    "MAX_INSTRUMENTS",
    "MAX_MESSAGE_BYTES",
    "MAX_WINDOWS",
    "PROTOCOL_VERSION",
    "SUPPORTED_PROTOCOLS",
    "Ack",
    "AuditBatch",
    "Bye",
    "ErrorMessage",
    "GatewayRecord",
    "Heartbeat",
    "Hello",
    "Inventory",
    "InventoryItem",
    "LineFramer",
    "MalformedMessage",
    "Message",
    "MessageTooLarge",
    "Mode",
    "Originator",
    "Placement",
    "Purpose",
    "UnknownMessageType",
    "Welcome",
    "Window",
    "Windows",
    "WireError",
    "decode",
    "decode_originator",
    "encode",
    "encode_originator",
]
