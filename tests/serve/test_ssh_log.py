"""The broker's log carries no line per SSH connection and channel unless asked:
asyncssh's INFO lines (addresses, opens, closes) are off by default and come back with
``HOSHU_SSH_LOG_LEVEL=info``; its warnings always show."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest

from broker.cli.serve import configure_logging
from broker.settings import BrokerSettings


class _Open(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        return False  # no authentication: the test is about the log, not the login


@pytest.fixture
def asyncssh_level() -> Iterator[None]:
    logger = logging.getLogger("asyncssh")
    before = logger.level
    yield
    logger.setLevel(before)


def _answer(process: asyncssh.SSHServerProcess[str]) -> None:
    process.stdout.write("ok\n")
    process.exit(0)


async def _one_session() -> None:
    """A real SSH connection on loopback with one command channel."""

    key = asyncssh.generate_private_key("ssh-ed25519")
    server = await asyncssh.listen(
        "127.0.0.1",
        0,
        server_host_keys=[key],
        server_factory=_Open,
        process_factory=_answer,
    )
    port = server.sockets[0].getsockname()[1]
    try:
        async with asyncssh.connect(
            "127.0.0.1", port, known_hosts=None, username="x", client_keys=None, agent_path=None
        ) as conn:
            result = await conn.run("true", check=True, timeout=10)
            assert result.stdout == "ok\n"
    finally:
        server.close()
        await server.wait_closed()


def _asyncssh_records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("asyncssh") and r.levelno == level]


async def test_by_default_no_asyncssh_line_per_connection_or_channel(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, asyncssh_level: None
) -> None:
    configure_logging(BrokerSettings(data_dir=tmp_path))
    assert logging.getLogger("asyncssh").getEffectiveLevel() == logging.WARNING
    await _one_session()
    assert _asyncssh_records(caplog, logging.INFO) == []


async def test_ssh_log_level_info_brings_the_connection_lines_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, asyncssh_level: None
) -> None:
    configure_logging(BrokerSettings(data_dir=tmp_path, ssh_log_level="info"))
    await _one_session()
    lines = [r.getMessage() for r in _asyncssh_records(caplog, logging.INFO)]
    assert any("Accepted SSH client connection" in m for m in lines), lines


def test_an_unknown_ssh_log_level_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ssh_log_level"):
        BrokerSettings.model_validate({"data_dir": tmp_path, "ssh_log_level": "verbose"})
