"""The wire contract as one JSON document (``python -m wire.schema``), for the snapshot test."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from wire.models import MESSAGE_TYPES, GatewayRecord, InventoryItem
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
)


def contract() -> dict[str, Any]:
    return {
        "protocol_version": PROTOCOL_VERSION,
        "supported_protocols": sorted(SUPPORTED_PROTOCOLS),
        "broker_username": BROKER_USERNAME,
        "control_subsystem": CONTROL_SUBSYSTEM,
        "limits": {
            "message_bytes": MAX_MESSAGE_BYTES,
            "audit_batch": MAX_AUDIT_BATCH,
            "instruments": MAX_INSTRUMENTS,
            "windows": MAX_WINDOWS,
        },
        "forwarded_event_types": sorted(FORWARDED_EVENT_TYPES),
        "records": {
            cls.__name__: [f.name for f in dataclasses.fields(cls)]
            for cls in (GatewayRecord, InventoryItem)
        },
        "messages": {name: model.model_json_schema() for name, model in MESSAGE_TYPES.items()},
    }


def main() -> None:
    print(json.dumps(contract(), indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
