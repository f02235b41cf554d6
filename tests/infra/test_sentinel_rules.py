"""Sentinel analytics rules: each KQL file is deployed, fully parameterised,
reads only columns of HoshuAudit_CL and only event types from the catalog,
and together they cover the detections the deployment promises."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from audit.catalog import CATALOG
from audit.events import COLUMN_NAMES
from audit.sentinel import TABLE_NAME
from tests.infra.bicep import MODULES_DIR, PLACEHOLDER, SENTINEL_DIR, function_calls, parse
from tests.infra.kql import (
    TABULAR_OPERATORS,
    balanced,
    clean,
    defined_names,
    pipe_operators,
    referenced_columns,
    string_literals,
)

SENTINEL_BICEP = MODULES_DIR / "sentinel.bicep"
KQL_FILES = sorted(SENTINEL_DIR.glob("*.kql"))
EVENT_TYPE = re.compile(r"^[a-z]+\.[a-z_]+$")


def _rendered(path: Path) -> str:
    """The query as Bicep deploys it, with every placeholder filled by a number."""
    return PLACEHOLDER.sub("5", path.read_text(encoding="utf-8"))


def test_every_rule_file_is_deployed_and_every_deployed_file_exists() -> None:
    loaded = {
        (SENTINEL_BICEP.parent / c["parameters"]["file_path"].strip("'")).resolve()
        for c in function_calls(parse(SENTINEL_BICEP), "load_text_content")
    }
    assert loaded == {p.resolve() for p in KQL_FILES}
    assert len(KQL_FILES) == 6


@pytest.mark.parametrize("path", KQL_FILES, ids=lambda p: p.stem)
def test_every_placeholder_is_filled_by_the_template(path: Path) -> None:
    bicep = SENTINEL_BICEP.read_text()
    for name in set(PLACEHOLDER.findall(path.read_text())):
        assert f"'{{{{{name}}}}}'" in bicep, f"{path.name}: {{{{{name}}}}} is never replaced"


@pytest.mark.parametrize("path", KQL_FILES, ids=lambda p: p.stem)
def test_rule_reads_only_columns_of_the_audit_table(path: Path) -> None:
    query = _rendered(path)
    assert TABLE_NAME in query
    used = referenced_columns(query, TABLE_NAME)
    assert used, f"{path.name}: no column found (the extractor is broken)"
    unknown = used - COLUMN_NAMES
    assert not unknown, f"{path.name} uses columns missing from {TABLE_NAME}: {sorted(unknown)}"


@pytest.mark.parametrize("path", KQL_FILES, ids=lambda p: p.stem)
def test_rule_is_well_formed_kql(path: Path) -> None:
    """Known tabular operators only, balanced brackets, one tabular expression at the end."""
    query = _rendered(path)
    operators = pipe_operators(query)
    assert operators and set(operators) <= TABULAR_OPERATORS, operators
    assert balanced(query)
    statements = [s.strip() for s in clean(query).split(";") if s.strip()]
    assert all(s.startswith("let ") for s in statements[:-1])
    assert not statements[-1].startswith("let ")


def test_the_form_check_catches_a_misspelt_operator() -> None:
    assert pipe_operators("T | summerize count() by X") == ["summerize"]
    assert "summerize" not in TABULAR_OPERATORS
    assert not balanced("T | where (A == 1")


@pytest.mark.parametrize("path", KQL_FILES, ids=lambda p: p.stem)
def test_rule_names_only_catalog_event_types(path: Path) -> None:
    types = [s for s in string_literals(path.read_text()) if EVENT_TYPE.match(s)]
    assert types or "EventType" not in path.read_text()
    unknown = set(types) - set(CATALOG)
    assert not unknown, f"{path.name} names event types not in the catalog: {unknown}"


def _query(stem: str) -> str:
    return _rendered(SENTINEL_DIR / f"{stem}.kql")


def test_the_promised_detections_are_there() -> None:
    """MFA bursts and lockouts; a session without a grant; emergencies; inbound files;
    a gateway down past a threshold; a missing or failed audit checkpoint."""
    mfa = _query("mfa-failures")
    for needle in (
        '"user.mfa_failed"',
        '"user.locked_out"',
        '"ssh.login"',
        'EventResult == "Failure"',
    ):
        assert needle in mfa
    grant = _query("session-outside-grant")
    assert '"session.started"' in grant and "isempty(GrantId)" in grant
    emergency = _query("emergency-access")
    assert '"emergency.started"' in emergency and "Emergency == true" in emergency
    files = _query("inbound-file-transfer")
    assert '"file.transferred"' in files and 'NetworkDirection == "Inbound"' in files
    gateway = _query("gateway-disconnected")
    assert '"gateway.disconnected"' in gateway and '"gateway.connected"' in gateway
    assert "LastConnect < LastDisconnect" in gateway
    checkpoint = _query("audit-checkpoint")
    assert '"audit.checkpoint"' in checkpoint and '"audit.verification_failed"' in checkpoint


def test_rules_are_scheduled_alert_rules_scoped_to_the_workspace() -> None:
    res = parse(SENTINEL_BICEP)["resources"]
    (rules,) = [r for r in res.values() if r["type"] == "Microsoft.SecurityInsights/alertRules"]
    assert rules["config"]["loop_type"] is not None  # one resource per rule definition
    config = rules["config"]["config"]
    assert config["kind"] == "Scheduled" and config["scope"] == "workspace"
    assert config["properties"]["incidentConfiguration"]["createIncident"] is True


def test_the_extractor_catches_an_unknown_column() -> None:
    """The column check can fail: a misspelt column is reported, defined names are not."""
    query = (
        "let limit_ = 3;\n"
        "HoshuAudit_CL // comment with NotAColumn\n"
        '| where EventTyp == "user.login" and SrcIpAddr has "10."\n'
        "| extend Hour = bin(TimeGenerated, 1h)\n"
        "| summarize Count = count() by Hour, ActorUsername, Details.reason\n"
        "| where Count > limit_"
    )
    assert referenced_columns(query, "HoshuAudit_CL") == {
        "EventTyp",
        "SrcIpAddr",
        "TimeGenerated",
        "ActorUsername",
        "Details",
    }
    assert {"limit_", "Hour", "Count"} <= defined_names(query)


def test_a_column_read_before_it_is_redefined_is_still_checked() -> None:
    query = "HoshuAudit_CL | where Bogus > 0 | extend Bogus = 1, Fine = Bogus"
    assert referenced_columns(query, "HoshuAudit_CL") == {"Bogus"}


def _rule_definitions() -> list[dict[str, object]]:
    rules: list[dict[str, object]] = parse(SENTINEL_BICEP)["variables"]["rules"]["value"]
    return rules


def test_entity_mappings_use_columns_the_rule_outputs() -> None:
    """Sentinel maps Account/IP/Host entities from columns that exist in the table and
    survive to the query's final shape (after its last project or summarize)."""
    variables = parse(SENTINEL_BICEP)["variables"]
    mapped = 0
    for rule in _rule_definitions():
        (call,) = function_calls(rule["query"], "load_text_content")
        kql = (SENTINEL_BICEP.parent / call["parameters"]["file_path"]).read_text()
        text = clean(kql)
        tail = text[max(text.rfind("| project"), text.rfind("| summarize")) :]
        entities = rule["entities"]
        assert isinstance(entities, list)
        for name in entities:
            for field in variables[name]["value"]["fieldMappings"]:
                column = field["columnName"]
                assert column in COLUMN_NAMES, f"{rule['key']}: {column} not in the table"
                assert re.search(rf"\b{column}\b", tail), (
                    f"{rule['key']}: entity column {column} is not in the rule's output"
                )
                mapped += 1
    assert mapped >= 10
