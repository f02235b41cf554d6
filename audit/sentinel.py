"""The Sentinel side of the event schema: the custom table and DCR stream.

``infra/bicep/audit-table.json`` is generated from :data:`audit.events.COLUMNS`
by :func:`table_declaration` (``python -m audit.sentinel > infra/bicep/audit-table.json``)
and loaded by the Bicep modules; a test keeps the file equal to the catalog, so
a new event column cannot silently miss Sentinel.
"""

from __future__ import annotations

import json
from typing import Any

from audit.events import COLUMNS

TABLE_NAME = "HoshuAudit_CL"
STREAM_NAME = "Custom-HoshuAudit"


def table_declaration() -> dict[str, Any]:
    return {
        "tableName": TABLE_NAME,
        "streamName": STREAM_NAME,
        "columns": [
            {"name": c.name, "type": c.type, "description": c.description} for c in COLUMNS
        ],
    }


def render() -> str:
    return json.dumps(table_declaration(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    print(render(), end="")
