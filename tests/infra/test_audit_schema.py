"""One schema, not two: the Sentinel table and the DCR stream come from the
audit catalog through infra/bicep/audit-table.json, and nowhere else."""

from __future__ import annotations

import json
from typing import Any

from audit import sentinel
from audit.events import COLUMNS
from tests.infra.bicep import (
    AUDIT_TABLE,
    MODULES_DIR,
    function_calls,
    loop_source,
    parse,
    property_access,
    resource_type,
    resources,
    scope_name,
)

LA_TYPES = {"string", "int", "long", "real", "boolean", "datetime", "dynamic", "guid"}


def _table_var(module: str) -> str:
    """The variable of ``module`` that holds loadJsonContent('../audit-table.json')."""
    path = MODULES_DIR / module
    names = [
        name
        for name, var in (parse(path).get("variables") or {}).items()
        if any(
            (path.parent / c["parameters"]["file_path"].strip("'")).resolve()
            == AUDIT_TABLE.resolve()
            for c in function_calls(var, "load_json_content")
        )
    ]
    assert len(names) == 1, f"{module} must load audit-table.json into exactly one variable"
    return str(names[0])


def _resource(module: str, type_prefix: str) -> dict[str, Any]:
    found = [r for r in resources(MODULES_DIR / module).values() if resource_type(r) == type_prefix]
    assert len(found) == 1, f"{module}: expected one {type_prefix}"
    return found[0]


def test_table_file_is_generated_from_the_catalog() -> None:
    """audit-table.json is exactly what `python -m audit.sentinel` prints today."""
    assert AUDIT_TABLE.read_text(encoding="utf-8") == sentinel.render(), (
        "infra/bicep/audit-table.json is stale: run "
        "`python -m audit.sentinel > infra/bicep/audit-table.json`"
    )


def test_table_file_has_every_catalog_column_with_a_log_analytics_type() -> None:
    table = json.loads(AUDIT_TABLE.read_text(encoding="utf-8"))
    assert table["tableName"] == "HoshuAudit_CL"
    assert table["streamName"] == "Custom-HoshuAudit"
    assert [c["name"] for c in table["columns"]] == [c.name for c in COLUMNS]
    assert all(c["type"] in LA_TYPES for c in table["columns"])
    assert table["columns"][0] == {
        "name": "TimeGenerated",
        "type": "datetime",
        "description": "When the event happened (UTC)",
    }


def test_custom_table_columns_come_from_the_generated_file() -> None:
    """The workspace table's schema is the loaded file's column list, not a copy."""
    var = _table_var("workspace.bicep")
    table = _resource("workspace.bicep", "Microsoft.OperationalInsights/workspaces/tables")
    config = table["config"]
    assert property_access(config["name"]) == (var, "tableName")
    schema = config["properties"]["schema"]
    assert property_access(schema["name"]) == (var, "tableName")
    assert property_access(schema["columns"]) == (var, "columns")


def test_dcr_stream_declaration_comes_from_the_generated_file() -> None:
    """The DCR declares the stream with the file's columns (name and type of each),
    sends it to the custom table, and the broker identity may publish to it."""
    var = _table_var("monitoring.bicep")
    rule = _resource("monitoring.bicep", "Microsoft.Insights/dataCollectionRules")
    props = rule["config"]["properties"]
    declarations = props["streamDeclarations"]
    assert list(declarations) == ["'${" + var + ".streamName}'"]
    columns = next(iter(declarations.values()))["columns"]
    assert loop_source(columns) == (var, "columns")
    item = columns["loop_type"]["detail"]["item_name"]
    assert {k: property_access(v) for k, v in columns["config"].items()} == {
        "name": (item, "name"),
        "type": (item, "type"),
    }
    (flow,) = props["dataFlows"]
    assert [property_access(s) for s in flow["streams"]] == [(var, "streamName")]
    assert flow["outputStream"] == "Custom-${" + var + ".tableName}"
    assert props["dataCollectionEndpointId"] is not None


def test_broker_identity_is_monitoring_metrics_publisher_on_the_dcr() -> None:
    text = (MODULES_DIR / "monitoring.bicep").read_text()
    # Monitoring Metrics Publisher, the built-in role for the Logs Ingestion API.
    assert "3913510d-42f4-4e42-8a64-420c390055eb" in text
    res = resources(MODULES_DIR / "monitoring.bicep")
    (rule_name,) = [
        n for n, r in res.items() if resource_type(r) == "Microsoft.Insights/dataCollectionRules"
    ]
    assignments = [
        r for r in res.values() if resource_type(r) == "Microsoft.Authorization/roleAssignments"
    ]
    assert [scope_name(a) for a in assignments] == [rule_name]
    (assignment,) = assignments
    assert assignment["config"]["properties"]["principalId"] == "brokerPrincipalId"


def test_no_module_declares_audit_columns_by_hand() -> None:
    """No .bicep file spells out catalog column names (they come from the file).
    sentinel.bicep names a few in its entity mappings, which test_sentinel_rules
    checks against the catalog."""
    hand_written = {"EventUid", "ActorUsername", "TargetSessionId", "ChainHash"}
    for path in MODULES_DIR.parent.rglob("*.bicep"):
        if path.name == "sentinel.bicep":
            continue
        text = path.read_text()
        assert not any(f"'{c}'" in text for c in hand_written), path.name
