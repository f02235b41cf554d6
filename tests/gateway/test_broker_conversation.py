"""The broker side of the control channel, on its own: what it accepts from a gateway."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from audit.events import new_event
from audit.testing import CapturingEmitter
from broker.tunnel.link import ControlConversation
from tests.gateway.harness import MemoryDirectory
from wire import AuditBatch, GatewayRecord, Inventory
from wire.models import InventoryEntry

REC = GatewayRecord("gw-1", "hosp-1", "stmary-gw1")


def conversation(emitter: CapturingEmitter, directory: MemoryDirectory) -> ControlConversation:
    return ControlConversation(
        None,  # type: ignore[arg-type]  # these tests need no SSH connection
        REC,
        directory=directory,
        emitter=emitter,
        clock=lambda: datetime.now(UTC),
        broker_version="t",
        heartbeat_s=1,
        heartbeat_misses=3,
        windows_interval_s=30,
    )


def ev(seq: int, type_: str = "gateway.channel_refused", **extra: Any) -> dict[str, Any]:
    record = dict(
        new_event(
            type_,
            GatewayId="someone-else",
            details={"channel": "x"} if type_.startswith("gateway.channel") else None,
        ).record
    )
    record.update(ChainSeq=seq, ChainHash="h", **extra)
    return record


def test_forwarded_events_are_stored_once_and_attributed_to_the_authenticated_gateway() -> None:
    emitter = CapturingEmitter()
    conv = conversation(emitter, MemoryDirectory())
    conv.handle(AuditBatch(events=(ev(1), ev(2))))
    conv.handle(AuditBatch(events=(ev(1), ev(2), ev(3))))  # re-sent after a reconnect
    assert [e.get("GatewayId") for e in emitter.events] == ["gw-1"] * 3
    assert {e.get("HospitalId") for e in emitter.events} == {"hosp-1"}
    assert conv.acked_seq == 3


def test_a_gateway_cannot_forge_other_event_types_or_columns() -> None:
    emitter = CapturingEmitter()
    conv = conversation(emitter, MemoryDirectory())
    forged_type = ev(1, "user.login")
    odd_column = ev(2, Password="x")
    odd_detail = ev(3)
    odd_detail["Details"] = {"secret": "x"}
    conv.handle(AuditBatch(events=(forged_type, odd_column, odd_detail, ev(4))))
    assert [e.get("EventType") for e in emitter.events] == ["gateway.channel_refused"]
    assert conv.acked_seq == 4  # dropped, not re-sent forever; the hospital copy keeps them


def test_inventory_reaches_the_directory() -> None:
    directory = MemoryDirectory()
    conv = conversation(CapturingEmitter(), directory)
    conv.handle(
        Inventory(
            instruments=(
                InventoryEntry(
                    name="lis-server",
                    host="10.0.0.9",
                    ports=(3389,),
                    protocol="rdp",
                    reachable=False,
                ),
            )
        )
    )
    assert directory.inventory["gw-1"][0].name == "lis-server"
    assert directory.inventory["gw-1"][0].reachable is False


def test_tunnel_settings_follow_the_broker_settings() -> None:
    from broker.settings import BrokerSettings
    from broker.tunnel.endpoint import TunnelSettings

    t = TunnelSettings.from_broker(
        BrokerSettings(tunnel_host="0.0.0.0", tunnel_port=2999), heartbeat_s=5
    )
    # the engineers' 120 s sign-in limit is not the gateway's: its hello keeps 10 s
    assert (t.host, t.port, t.heartbeat_s, t.login_timeout_s) == ("0.0.0.0", 2999, 5, 10.0)
