"""The broker closes the tunnel of a gateway whose control channel goes silent.

The control channel's heartbeats are the broker's liveness check: a tunnel that
carries no control message for ``heartbeat_s * heartbeat_misses`` is closed, even
while the gateway's SSH layer still answers (TCP and SSH stay up).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.gateway.harness import GATEWAY_ID, lab
from tests.support import poll


async def test_a_gateway_gone_quiet_is_closed_by_the_broker_within_its_heartbeat_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lab's tunnel beats every second, three missed beats: the broker drops the
    quiet gateway's tunnel within about 3 s and says so (``gateway.disconnected``)."""
    async with lab(tmp_path) as L:
        agent = await L.start_agent()
        await L.listener.registry.wait_for(GATEWAY_ID, 10)
        link = agent.link
        assert link is not None
        first = L.listener.registry.info(GATEWAY_ID)
        # every control message of the gateway leaves through Link.send; SSH stays up
        monkeypatch.setattr(link, "send", lambda message: False)
        took = await poll(
            lambda: L.listener.registry.info(GATEWAY_ID) is not first,
            8,
            "the broker closed the silent tunnel",
        )
        assert took < 3 * 1 + 3.0  # heartbeat_s * misses, and slack for a loaded machine
        assert any(
            e.get("GatewayId") == GATEWAY_ID for e in L.emitter.of_type("gateway.disconnected")
        )
