"""`hoshu audit compliance`: each control's status is computed from the deployment's
configuration and a test run, and says why a control is not (fully) met."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from audit import new_event
from audit.compliance import MET, NOT_MET, PARTLY, Deployment, assess, read_junit
from audit.index import AuditIndex
from broker.cli.main import main


def _status(d: Deployment | None = None) -> dict[int, tuple[str, str]]:
    return {a.control.number: (a.status, " ".join(a.reasons)) for a in assess(d)}


def test_the_default_configuration_does_not_claim_what_it_does_not_deliver() -> None:
    s = _status()
    assert s[13][0] == PARTLY and "always" in s[13][1]
    assert s[25][0] == NOT_MET and "WORM" in s[25][1] and "no SIEM sink" in s[25][1]
    assert s[18][0] == PARTLY
    assert s[28][0] == PARTLY and "kept forever" in s[28][1]
    assert s[29][0] == NOT_MET
    assert s[7] == (MET, "")


def test_a_configured_deployment_is_judged_on_its_configuration() -> None:
    d = Deployment(
        sinks=(("fluentd", True), ("sentinel", True)),
        gateway_modes={"gw1": "window-only", "gw2": "window-only"},
        events_retention_days=365,
        recordings_retention_days=365,
    )
    s = _status(d)
    assert s[13] == (MET, "") and s[28] == (MET, "") and s[29] == (MET, "")
    assert s[25][0] == PARTLY and "no WORM storage" in s[25][1]  # until a WORM store exists
    s = _status(
        Deployment(
            sinks=(("syslog", False),), gateway_modes={"gw1": "always", "gw2": "window-only"}
        )
    )
    assert s[18][0] == NOT_MET and "syslog" in s[18][1]
    assert s[13][0] == PARTLY and "gw1" in s[13][1] and "gw2" not in s[13][1]


def test_a_failed_or_missing_cited_test_lowers_the_status(tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    junit.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.frontdoor.test_auth" name="test_key_alone_never_gets_in"/>'
        '<testcase classname="tests.frontdoor.test_auth" name="test_a_code_is_accepted_once">'
        '<failure message="boom"/></testcase>'
        '<testcase classname="tests.control.test_rules" name="test_weak_passwords_are_refused[a]"/>'
        "</testsuite></testsuites>"
    )
    results = read_junit(junit)
    assert results["tests/frontdoor/test_auth.py::test_a_code_is_accepted_once"] == "failed"
    s = _status(Deployment(test_results=results))
    assert s[7][0] == NOT_MET and "test_a_code_is_accepted_once" in s[7][1]
    assert s[8][0] == PARTLY and "did not run" in s[8][1]  # two of its three tests absent


def test_the_operator_prints_the_status_of_their_deployment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HOSHU_DATA_DIR", str(tmp_path))
    monkeypatch.setenv(
        "HOSHU_AUDIT_SINKS", json.dumps([{"kind": "fluentd", "host": "127.0.0.1", "port": 24224}])
    )
    monkeypatch.setenv("HOSHU_AUDIT_EVENTS_RETENTION_DAYS", "400")
    index = AuditIndex.from_url(f"sqlite:///{tmp_path / 'hoshu.db'}")
    index.add(
        [
            new_event(
                "gateway.connected",
                GatewayId="gw-okayama",
                details={
                    "mode": "window-only",
                    "version": "1",
                    "key_fingerprint": "x",
                    "clock_offset_s": 0.0,
                },
            ).record,
            new_event(
                "gateway.connected",
                GatewayId="gw-handa",
                details={
                    "mode": "always",
                    "version": "1",
                    "key_fingerprint": "y",
                    "clock_offset_s": 0.0,
                },
            ).record,
        ]
    )
    index.engine.dispose()
    assert main(["audit", "compliance"]) == 0
    out = capsys.readouterr().out
    assert f"for: broker at {tmp_path}" in out
    assert "13  partly" in out and "gateways gw-handa keep a tunnel" in out
    assert "29  met" in out and "25  partly" in out and "no WORM storage" in out
    assert "no retention period for recordings" in out
    assert main(["--json", "audit", "compliance", "--lang", "ja"]) == 0
    rows = {r["number"]: r for r in json.loads(capsys.readouterr().out)["controls"]}
    assert rows[29]["status"] == "met" and rows[29]["label"] == "充足"
    assert rows[13]["label"] == "一部充足"
