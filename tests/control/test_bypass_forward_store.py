"""The store tells the front door an instrument's protocol, so the desktop port of an
instrument the inventory marks RDP is refused as a forward (the real policy, not a fake)."""

from __future__ import annotations

from broker.frontdoor.raw_paths import interactive_port
from broker.store.directory import StoreAccessPolicy, StoreGatewayDirectory
from tests.control.conftest import World, enrol_gateway
from wire.models import InventoryItem


def test_inventory_protocol_reaches_the_front_door(world: World) -> None:
    w = world
    gw_id, _ = enrol_gateway(w)
    StoreGatewayDirectory(w.s).record_inventory(
        gw_id,
        [
            InventoryItem("lis-desk", "10.0.0.20", (13389, 8080), "rdp", "lis", "ws", True, None),
            InventoryItem(
                "cobas-1", "10.0.0.10", (22, 8080), "ssh", "chem", "c503", True, "SHA256:k"
            ),
        ],
    )
    policy = StoreAccessPolicy(w.s)
    desk, cobas = policy.instrument("lis-desk"), policy.instrument("cobas-1")
    assert desk is not None and cobas is not None
    assert desk.protocol == "rdp" and cobas.protocol == "ssh"
    # which of its ports is the desktop is not known: none is forwarded
    assert interactive_port(desk, 13389) == interactive_port(desk, 8080) == "rdp"
    assert interactive_port(cobas, 8080) is None
    assert interactive_port(cobas, 22) == "ssh"
