"""The gateway <-> broker contract: names, protocol version, message models.

Imports nothing of hoshu's.  Gateways in hospitals are upgraded more slowly
than the broker, so every change here is versioned and snapshot-tested.
"""

PROTOCOL_VERSION = 1
