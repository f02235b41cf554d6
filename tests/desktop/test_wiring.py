"""The broker as ``hoshu serve`` assembles it offers desktop sessions: once the front door
runs, the console's gate shares its live sessions and route to instruments, and
recordings go to the broker's recording store."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from audit.testing import CapturingEmitter
from broker.assembly import attach_front_door, build_runtime
from broker.settings import BrokerSettings
from broker.tunnel.connector import DirectConnector


async def test_the_assembled_broker_has_a_desktop_gate_on_the_front_doors_sessions(
    tmp_path: Path,
) -> None:
    rt = build_runtime(BrokerSettings(data_dir=tmp_path / "data"), emitter=CapturingEmitter())
    connector = DirectConnector()
    handle = attach_front_door(rt, connector, port=0)
    assert rt.app.state.desktop_gate() is None  # not before the front door runs
    task = asyncio.ensure_future(rt.tasks[-1]())
    try:
        await asyncio.wait_for(handle.ready.wait(), 10)
        gate = rt.app.state.desktop_gate()
        assert gate is not None and handle.door is not None
        assert gate.registry is handle.door.sessions and gate.connector is connector
        writer = gate.sink_for("probe.rfb")
        writer.write(b"x")
        writer.close()
        assert (tmp_path / "data" / "recordings" / "probe.rfb").read_bytes() == b"x"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
