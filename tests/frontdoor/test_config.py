"""``hoshu ssh-config``: stock ssh reaches ``<instrument>.hoshu`` with the printed block."""

from __future__ import annotations

import pytest

from broker.cli.main import main
from broker.frontdoor.errors import SshConfigError
from broker.frontdoor.sshconfig import SshConfigRequest, render
from tests.frontdoor.harness import World, run


async def test_generated_config_makes_the_short_name_work(
    granted: World, capsys: pytest.CaptureFixture[str]
) -> None:
    w = granted
    host_key = w.tmp / "broker_host_key.pub"
    host_key.write_text(w.door.host_key_line + "\n")
    known = w.tmp / "hoshu_known_hosts"
    cert = w.cert_file()
    rc = main(
        [
            "ssh-config",
            "--user",
            "alice",
            "--instrument",
            w.instrument,
            "--broker-host",
            "127.0.0.1",
            "--broker-port",
            str(w.door.port),
            "--identity-file",
            str(w.key_path),
            "--certificate-file",
            str(cert),
            "--known-hosts-file",
            str(known),
            "--host-key-file",
            str(host_key),
            "--write-known-hosts",
        ]
    )
    assert rc == 0
    config = w.tmp / "ssh_config"
    config.write_text(capsys.readouterr().out)
    assert known.read_text().startswith("hoshu-broker ssh-ed25519 ")
    r = await run(
        [
            "ssh",
            "-F",
            str(config),
            "-o",
            "BatchMode=yes",
            f"{w.instrument}.hoshu",
            "echo via-config",
        ],
        w.env(),
    )
    assert r.rc == 0, r.err
    assert r.out == b"via-config\n"


def test_config_refuses_bad_names() -> None:
    with pytest.raises(SshConfigError):
        render(SshConfigRequest("alice", "broker", 2222, ("Bad Name",)))
    with pytest.raises(SshConfigError):
        render(SshConfigRequest("alice+x", "broker", 2222, ("cobas-c503-1",)))


def test_sessions_cli_reports_an_unreachable_api(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["sessions", "--api", "http://127.0.0.1:9", "list"])
    assert rc == 1
    assert "cannot be reached" in capsys.readouterr().err
