"""The broker's audit wiring: one call opens the log, key, index and shippers."""

from __future__ import annotations

from pathlib import Path

import pytest

from audit import new_event
from audit.chain import verify
from audit.errors import ChainError
from audit.index import EventQuery
from audit.service import AuditConfig, SinkConfig, build_audit
from audit.signing import TrustedKeys
from broker.assembly import audit_config
from broker.settings import BrokerSettings
from tests.fixtures.siem import DEADLINE_S, ForwardServer, Rsyslog
from tests.support import poll_sync


def test_build_audit_ships_to_every_sink_and_indexes(
    tmp_path: Path, forward_server: ForwardServer, rsyslog: Rsyslog
) -> None:
    settings = BrokerSettings(
        data_dir=tmp_path / "data",
        audit_sinks=[
            {"kind": "fluentd", "host": "127.0.0.1", "port": forward_server.port},
            {"kind": "syslog", "host": "127.0.0.1", "port": rsyslog.port, "mask": False},
        ],
    )
    runtime = build_audit(audit_config(settings))
    runtime.start()
    try:
        for i in range(100):
            runtime.log.emit(
                new_event(
                    "session.command",
                    TargetSessionId="s1",
                    details={"command": f"grep 0012345678 {i}.csv"},
                )
            )
        assert runtime.shipping.wait_idle(20)
        status = {s["sink"]: s for s in runtime.status()}
        assert set(status) == {"index", "fluentd", "syslog"}
        assert all(s["lag_events"] == 0 for s in status.values())
        assert len(runtime.index.search(EventQuery(session_id="s1", limit=1000)).events) == 100
    finally:
        runtime.stop()
    fluent = [r for r in forward_server.records if r["EventType"] == "session.command"]
    assert len(fluent) == 100 and all("0012345678" not in str(r) for r in fluent)
    poll_sync(
        lambda: sum("grep 0012345678" in x for x in rsyslog.lines()) == 100,
        DEADLINE_S,
        what="unmasked events in the hospital syslog",
    )
    pub = settings.data_dir / "keys" / "audit_signing_key.pub"
    result = verify(settings.audit_log_path, keys=TrustedKeys.from_pem_files([pub]))
    assert result.ok and result.checkpoints >= 1  # stop() seals the log with a checkpoint


def test_broker_does_not_start_without_a_writable_log(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    cfg = AuditConfig(
        log_path=blocker / "audit.log",
        signing_key_path=tmp_path / "k",
        cursor_dir=tmp_path / "c",
        index_url=f"sqlite:///{tmp_path}/i.db",
        recordings_dir=tmp_path / "r",
    )
    with pytest.raises((ChainError, OSError)):
        build_audit(cfg)


def test_unknown_sink_kind_is_refused(tmp_path: Path) -> None:
    cfg = AuditConfig(
        log_path=tmp_path / "a.log",
        signing_key_path=tmp_path / "k",
        cursor_dir=tmp_path / "c",
        index_url=f"sqlite:///{tmp_path}/i.db",
        recordings_dir=tmp_path / "r",
        sinks=[SinkConfig(kind="kafka")],
    )
    with pytest.raises(ValueError, match="unknown sink kind"):
        build_audit(cfg)


def test_runtime_verification_records_success_and_names_tampering(tmp_path: Path) -> None:
    cfg = AuditConfig(
        log_path=tmp_path / "audit.log",
        signing_key_path=tmp_path / "k",
        cursor_dir=tmp_path / "c",
        index_url=f"sqlite:///{tmp_path}/i.db",
        recordings_dir=tmp_path / "r",
        checkpoint_every=10,
        hostname="broker-1",
    )
    runtime = build_audit(cfg)
    try:
        for i in range(25):
            runtime.log.emit(new_event("admin.change", ActorUsername=f"admin{i}"))
        assert runtime.verify().ok
        text = cfg.log_path.read_text()
        cfg.log_path.write_text(text.replace('"admin3"', '"admin9"'))  # same length
        result = runtime.verify()
        assert not result.ok and result.first_bad == 4
    finally:
        runtime.shipping.stop()
        runtime.log.close()
    from audit.chain import read_events

    events = list(read_events(cfg.log_path))
    assert [e.type for e in events if e.type.startswith("audit.verif")] == [
        "audit.verified",
        "audit.verification_failed",
    ]
    failed = [e for e in events if e.type == "audit.verification_failed"]
    assert failed[0].details["position"] == 4
    assert events[-1].type == "audit.checkpoint"  # closing the log signs its tail
    cps = [e for e in events if e.type == "audit.checkpoint"]
    assert cps and all(e.get("DvcHostname") == "broker-1" for e in cps)


def test_router_mounts_on_the_control_plane_app_and_demands_a_token(tmp_path: Path) -> None:
    """create_app(..., extra_routers=[build_router(...)]) with the real authentication."""
    from fastapi.testclient import TestClient

    from broker.api.app import create_app
    from broker.api.routes.audit import build_router

    settings = BrokerSettings(data_dir=tmp_path / "data")
    runtime = build_audit(audit_config(settings))
    try:
        router = build_router(
            index=runtime.index,
            reports=runtime.reports,
            recordings_dir=settings.recordings_dir,
            emitter=runtime.log,
            sink_status=runtime.status,
        )
        app = create_app(settings, emitter=runtime.log, extra_routers=[router])
        with TestClient(app, raise_server_exceptions=False) as client:
            r = client.get("/v1/audit/events")
            assert r.status_code == 401 and r.json()["error"]["code"] == "unauthenticated"
            r = client.get("/v1/recordings/s1", headers={"Authorization": "Bearer nonsense"})
            assert r.status_code == 401
        if app.state.control_plane is not None:
            app.state.control_plane.close()
    finally:
        runtime.stop()
