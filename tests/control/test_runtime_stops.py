"""A broker whose long-running part stops by itself stops too, instead of running half."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest

from audit.testing import CapturingEmitter
from broker.access.passwords import Hasher
from broker.assembly import build_runtime
from broker.runtime import BrokerStopped, serve
from broker.settings import BrokerSettings


async def test_a_part_that_fails_stops_the_broker_and_runs_its_closers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rt = build_runtime(
        BrokerSettings(data_dir=tmp_path / "data", api_port=0),
        emitter=CapturingEmitter(),
        hasher=Hasher(time_cost=1, memory_cost=64),
    )
    closed: list[str] = []

    async def tunnel_listener() -> None:
        raise OSError("the tunnel port is taken")

    rt.tasks.append(tunnel_listener)
    rt.closers.append(lambda: closed.append("closed"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    with (
        caplog.at_level(logging.CRITICAL, logger="broker.runtime"),
        pytest.raises(BrokerStopped) as stopped,
    ):
        await serve(rt, sock=sock)
    assert isinstance(stopped.value.__cause__, OSError)
    assert "a part of the broker stopped" in caplog.text
    assert "the tunnel port is taken" in caplog.text
    assert closed == ["closed"]  # the store and the audit log are closed as on a stop
