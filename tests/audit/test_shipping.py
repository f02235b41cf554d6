"""Lossless shipping: outages delay delivery, never drop or duplicate (after de-dup)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from audit import new_event
from audit.chain import ChainLog, read_events
from audit.outbox import CursorStore, OutboxCorrupt, SinkError, reset_cursor
from audit.shipper import Backoff, Shipper, ShippingService
from audit.signing import CheckpointSigner
from audit.sinks.azure import AzureLogsSink
from audit.sinks.fluent import FluentForwardSink
from audit.sinks.syslog import SyslogSink
from tests.fixtures.siem import (
    DEADLINE_S,
    ForwardServer,
    LogsIngestion,
    Rsyslog,
    StaticToken,
    tls_contexts,
)
from tests.support import poll_sync

FAST = Backoff(initial_s=0.01, factor=2.0, max_s=0.2)


def _emit(log: ChainLog, n: int, start: int = 0) -> None:
    for k in range(0, n, 250):
        log.append_many(
            [
                new_event(
                    "session.command",
                    ActorUsername="eng-sato",
                    TargetHostname="cobas-c503-1",
                    TargetSessionId="sess-1",
                    HospitalId="h1",
                    TargetPortNumber=22,
                    EventMessage=f"command {start + i}",
                    details={"command": f"cat /var/log/analyzer/{start + i}.log"},
                )
                for i in range(k, min(n, k + 250))
            ]
        )


@pytest.fixture
def log(tmp_path: Path) -> Iterator[ChainLog]:
    with ChainLog(
        tmp_path / "audit" / "audit.log", signer=CheckpointSigner.generate(), checkpoint_every=2000
    ) as chain:
        yield chain


def _service(log: ChainLog, sink: Any, tmp_path: Path, **kw: Any) -> ShippingService:
    shipper = Shipper(
        sink,
        log.path,
        CursorStore(tmp_path / "cursors"),
        backoff=FAST,
        batch_size=kw.pop("batch_size", 1000),
        emitter=log,
        **kw,
    )
    service = ShippingService([shipper], poll_s=0.05)
    log.add_listener(service.wake)
    service.start()
    return service


def _assert_exactly_once(log: ChainLog, delivered: list[str]) -> None:
    written = [e.uid for e in read_events(log.path)]
    assert len(written) >= 10_000
    assert set(delivered) == set(written), (
        f"missing {len(set(written) - set(delivered))}, extra {len(set(delivered) - set(written))}"
    )


def test_fluentd_outage_during_10000_events_loses_nothing(
    log: ChainLog, forward_server: ForwardServer, tmp_path: Path
) -> None:
    sink = FluentForwardSink("127.0.0.1", forward_server.port, timeout_s=5)
    service = _service(log, sink, tmp_path)
    try:
        _emit(log, 3000)
        poll_sync(lambda: len(set(forward_server.uids())) >= 3000, DEADLINE_S, what="first events")
        forward_server.stop()
        _emit(log, 4000, 3000)
        poll_sync(lambda: service.status()[0].state == "backing_off", DEADLINE_S, what="backoff")
        assert service.status()[0].lag_events >= 4000
        forward_server.drop_before_ack = 2  # back, but closes mid-batch twice
        forward_server.start()
        _emit(log, 3000, 7000)
        assert service.wait_idle(30)
    finally:
        service.stop()
    assert forward_server.tags == {"hoshu.audit"}
    _assert_exactly_once(log, forward_server.uids())


def test_logs_ingestion_outage_and_throttling_lose_nothing_and_match_the_stream(
    log: ChainLog, logs_ingestion: LogsIngestion, tmp_path: Path
) -> None:
    sink = AzureLogsSink(
        logs_ingestion.endpoint,
        logs_ingestion.RULE,
        StaticToken(logs_ingestion.TOKEN),
        allow_http=True,
        retry_total=0,
    )
    service = _service(log, sink, tmp_path)
    try:
        _emit(log, 3000)
        poll_sync(lambda: len(set(logs_ingestion.uids())) >= 3000, DEADLINE_S, what="first events")
        logs_ingestion.outage = True
        _emit(log, 3500, 3000)
        poll_sync(lambda: service.status()[0].state == "backing_off", DEADLINE_S, what="backoff")
        logs_ingestion.throttle = True  # 429 with Retry-After
        _emit(log, 3500, 6500)
        poll_sync(lambda: "HTTP 429" in service.status()[0].last_error, DEADLINE_S, what="429 seen")
        logs_ingestion.outage = False
        assert service.wait_idle(60)
    finally:
        service.stop()
    assert logs_ingestion.rejected == []
    _assert_exactly_once(log, logs_ingestion.uids())


def test_logs_ingestion_stand_in_rejects_records_that_do_not_match_the_stream(
    logs_ingestion: LogsIngestion,
) -> None:
    """The contract check can fail: an undeclared column or a wrong type is refused."""
    sink = AzureLogsSink(
        logs_ingestion.endpoint,
        logs_ingestion.RULE,
        StaticToken(logs_ingestion.TOKEN),
        allow_http=True,
        retry_total=0,
    )
    good = dict(new_event("user.logout").record)
    with pytest.raises(SinkError) as err:
        sink.send([good, {**good, "Patient": "x"}, {**good, "TargetPortNumber": "22"}])
    assert err.value.permanent and "HTTP 400" in str(err.value)
    assert len(logs_ingestion.rejected) == 2 and logs_ingestion.records == []
    bad_token = AzureLogsSink(
        logs_ingestion.endpoint,
        logs_ingestion.RULE,
        StaticToken("wrong"),
        allow_http=True,
        retry_total=0,
    )
    with pytest.raises(SinkError, match="401"):
        bad_token.send([good])


def test_rsyslog_outage_during_10000_events_loses_nothing(
    log: ChainLog, rsyslog: Rsyslog, tmp_path: Path
) -> None:
    sink = SyslogSink("127.0.0.1", rsyslog.port, timeout_s=5)
    service = _service(log, sink, tmp_path)
    try:
        _emit(log, 3000)
        poll_sync(
            lambda: len(set(rsyslog.uids())) >= 3000, DEADLINE_S, what="first events in rsyslog"
        )
        rsyslog.stop()
        _emit(log, 4000, 3000)
        poll_sync(lambda: service.status()[0].state == "backing_off", DEADLINE_S, what="backoff")
        rsyslog.start()
        _emit(log, 3000, 7000)
        assert service.wait_idle(30)
        poll_sync(
            lambda: len(set(rsyslog.uids())) >= log.seq, DEADLINE_S, what="rsyslog to write all"
        )
    finally:
        service.stop()
    _assert_exactly_once(log, rsyslog.uids())
    line = next(x for x in rsyslog.lines() if "session.command" in x)
    assert line.startswith("<134>1 ") and " hoshu - session.command [hoshu@32473 uid=" in line


def test_corrupted_cursor_stops_the_sink_loudly_and_loses_nothing(
    log: ChainLog, forward_server: ForwardServer, tmp_path: Path
) -> None:
    cursors = CursorStore(tmp_path / "cursors")
    shipper = Shipper(
        FluentForwardSink("127.0.0.1", forward_server.port),
        log.path,
        cursors,
        emitter=log,
        batch_size=100,
    )
    _emit(log, 250)
    assert shipper.ship_once() == 100
    cursors.path("fluentd").write_text('{"seq": 90, "offset": 1, "hash": "x", "check": "0"}')
    with pytest.raises(OutboxCorrupt, match="checksum"):
        shipper.ship_once()
    status = shipper.status()
    assert status.state == "stopped" and "checksum" in status.last_error
    assert [e.details["sink"] for e in read_events(log.path) if e.type == "audit.outbox_corrupt"]
    with pytest.raises(OutboxCorrupt):
        shipper.ship_once()  # stays stopped until an operator looks
    reset_cursor(cursors, log.path, "fluentd", 100)  # the operator's fix resumes the sink
    while shipper.ship_once():
        pass
    assert set(forward_server.uids()) == {e.uid for e in read_events(log.path)}


def test_cursor_pointing_at_another_log_is_refused(
    log: ChainLog, forward_server: ForwardServer, tmp_path: Path
) -> None:
    cursors = CursorStore(tmp_path / "cursors")
    shipper = Shipper(FluentForwardSink("127.0.0.1", forward_server.port), log.path, cursors)
    _emit(log, 20)
    shipper.ship_once()
    c = cursors.load("fluentd")
    cursors.save("fluentd", type(c)(c.seq, c.offset - 7, c.hash))
    with pytest.raises(OutboxCorrupt, match="does not match the log"):
        shipper.ship_once()


def test_lag_is_visible_and_reported_as_an_event(log: ChainLog, tmp_path: Path) -> None:
    """With the sink down, status shows the backlog and an audit.sink_lag event is written."""
    from datetime import timedelta

    from audit.events import utc_now

    now = [utc_now()]
    sink = FluentForwardSink("127.0.0.1", 1, timeout_s=1)  # nothing listens on port 1
    shipper = Shipper(
        sink,
        log.path,
        CursorStore(tmp_path / "c"),
        emitter=log,
        lag_alert_s=60,
        clock=lambda: now[0],
        backoff=FAST,
    )
    _emit(log, 10)
    with pytest.raises(SinkError, match="unreachable"):
        shipper.ship_once()
    assert shipper.status().lag_events == 10 and shipper.status().state == "backing_off"
    assert not shipper.report_lag()  # not yet over the threshold
    now[0] += timedelta(seconds=120)
    assert shipper.report_lag()
    lag = [e for e in read_events(log.path) if e.type == "audit.sink_lag"]
    assert lag[0].details["sink"] == "fluentd" and lag[0].details["lag_events"] >= 10
    assert "unreachable" in lag[0].details["last_error"]
    assert not shipper.report_lag()  # rate limited


def test_backoff_grows_is_capped_and_honours_retry_after() -> None:
    b = Backoff(initial_s=1, factor=2, max_s=8)
    assert [b.delay(n, lambda: 1.0) for n in (1, 2, 3, 4, 5)] == [1, 2, 4, 8, 8]
    assert b.delay(3, lambda: 0.0) == 2  # jitter never below half


def test_fluentd_over_tls(log: ChainLog, tmp_path: Path) -> None:
    server_ctx, client_ctx = tls_contexts(tmp_path / "tls")
    server = ForwardServer(tls=server_ctx)
    server.start()
    try:
        sink = FluentForwardSink(
            "127.0.0.1", server.port, tls=client_ctx, server_hostname="localhost"
        )
        _emit(log, 5)
        shipper = Shipper(sink, log.path, CursorStore(tmp_path / "c"))
        assert shipper.ship_once() == 5
        assert len(server.uids()) == 5
    finally:
        server.stop()


def test_syslog_over_tls_to_a_real_rsyslog(log: ChainLog, tmp_path: Path) -> None:
    """RFC 5425: the same octet-counted messages inside TLS, verified against the CA."""
    _, client_ctx = tls_contexts(tmp_path / "tls")
    server = Rsyslog(tmp_path / "rsyslog-tls", tls_dir=tmp_path / "tls").started()
    try:
        sink = SyslogSink(
            "127.0.0.1", server.port, tls=client_ctx, server_hostname="localhost", timeout_s=5
        )
        _emit(log, 300)
        shipper = Shipper(sink, log.path, CursorStore(tmp_path / "c"), batch_size=100)
        while shipper.ship_once():
            pass
        poll_sync(lambda: len(set(server.uids())) == 300, DEADLINE_S, what="TLS events in rsyslog")
    finally:
        server.stop()
    assert "hoshu - session.command" in server.lines()[0]


def test_logs_ingestion_over_https_splits_big_batches_under_1_mb(
    log: ChainLog, tmp_path: Path
) -> None:
    """The production path: https, bearer token, gzip chunks of at most 1 MB each."""
    server_ctx, _ = tls_contexts(tmp_path / "tls")
    service = LogsIngestion(tls=server_ctx)
    try:
        token = StaticToken(service.TOKEN)
        sink = AzureLogsSink(
            service.endpoint,
            service.RULE,
            token,
            retry_total=0,
            ca_file=str(tmp_path / "tls" / "siem.crt"),
        )
        log.append_many(
            [
                new_event(
                    "session.command",
                    TargetSessionId="big",
                    details={"command": "x" * 2000 + str(i)},
                )
                for i in range(1500)
            ]
        )  # about 3.5 MB of JSON
        shipper = Shipper(sink, log.path, CursorStore(tmp_path / "c"), batch_size=2000)
        assert shipper.ship_once() == 1500
        assert service.requests >= 4 and service.rejected == []
        assert len(set(service.uids())) == 1500 and token.calls >= 1
    finally:
        service.close()


def test_logs_ingestion_stand_in_refuses_oversized_bodies(logs_ingestion: LogsIngestion) -> None:
    import httpx

    url = (
        f"{logs_ingestion.endpoint}/dataCollectionRules/{logs_ingestion.RULE}/streams/"
        f"{logs_ingestion.stream}?api-version=2023-01-01"
    )
    r = httpx.post(
        url,
        content=b"[" + b" " * (1024 * 1024 + 10) + b"]",
        timeout=10,
        headers={
            "Authorization": f"Bearer {logs_ingestion.TOKEN}",
            "Content-Type": "application/json",
        },
    )
    assert r.status_code == 413


def test_an_oversized_event_does_not_block_the_logs_ingestion_outbox(
    log: ChainLog, logs_ingestion: LogsIngestion, tmp_path: Path
) -> None:
    sink = AzureLogsSink(
        logs_ingestion.endpoint,
        logs_ingestion.RULE,
        StaticToken(logs_ingestion.TOKEN),
        allow_http=True,
        retry_total=0,
    )
    log.emit(new_event("session.command", details={"command": "y" * 1_500_000}))
    _emit(log, 3)
    shipper = Shipper(sink, log.path, CursorStore(tmp_path / "c"))
    assert shipper.ship_once() == 4
    big = logs_ingestion.records[0]
    assert "Details" not in big and "larger than the upload limit" in big["EventResultDetails"]


def test_a_fluentd_that_never_acknowledges_times_out_and_the_batch_is_resent(
    log: ChainLog, forward_server: ForwardServer, tmp_path: Path
) -> None:
    forward_server.silent = True
    sink = FluentForwardSink("127.0.0.1", forward_server.port, timeout_s=0.3)
    shipper = Shipper(sink, log.path, CursorStore(tmp_path / "c"), backoff=FAST)
    _emit(log, 20)
    with pytest.raises(SinkError, match="did not acknowledge"):
        shipper.ship_once()
    assert shipper.status().lag_events == 20  # received but not acknowledged: still owed
    forward_server.silent = False
    assert shipper.ship_once() == 20
    uids = forward_server.uids()
    assert len(uids) == 40 and len(set(uids)) == 20  # sent twice, de-duplicated by EventUid
