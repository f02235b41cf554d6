"""The real-sshd analyzer PC answers stock OpenSSH clients with the injected key only."""

from __future__ import annotations

import asyncio
import socket
import subprocess
from pathlib import Path

import asyncssh
import pytest

from labsim.sshd import OpenSSHInstrument

TIMEOUT_S = 30


def _ssh_opts(inst: OpenSSHInstrument, known_hosts: Path, key: Path) -> list[str]:
    return [
        "-F", "/dev/null",
        "-i", str(key),
        "-o", "BatchMode=yes",
        "-o", "IdentitiesOnly=yes",
        "-o", f"UserKnownHostsFile={known_hosts}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "StrictHostKeyChecking=yes",
        "-o", "ConnectTimeout=10",
    ]  # fmt: skip


def _ssh(
    inst: OpenSSHInstrument, tmp_path: Path, command: str, key: Path | None = None
) -> subprocess.CompletedProcess[str]:
    known = inst.write_known_hosts(tmp_path / "known_hosts")
    argv = ["ssh", "-p", str(inst.port), *_ssh_opts(inst, known, key or inst.client_key_path)]
    return subprocess.run(
        [*argv, f"{inst.username}@{inst.host}", command],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )


def test_ssh_command_reads_the_qc_file_in_the_data_directory(
    openssh_instrument: OpenSSHInstrument, tmp_path: Path
) -> None:
    """A stock ssh client with the injected key, pinning the host key, reads QC results."""
    result = _ssh(openssh_instrument, tmp_path, "pwd; cat qc/2026-11-qc.csv")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == str(openssh_instrument.data_dir)
    assert lines[1] == "date,assay,level,lot,value,unit,target,sd,z,westgard"
    assert any(",GLU,1," in line for line in lines[2:])


def test_sftp_lists_the_analyzer_data_directory(
    openssh_instrument: OpenSSHInstrument, tmp_path: Path
) -> None:
    """sftp starts in the data directory and sees logs, qc and config (no keys)."""
    inst = openssh_instrument
    known = inst.write_known_hosts(tmp_path / "known_hosts")
    result = subprocess.run(
        ["sftp", "-b", "-", "-P", str(inst.port), *_ssh_opts(inst, known, inst.client_key_path),
         f"{inst.username}@{inst.host}"],
        input="pwd\nls -1\nget config/analyzer.ini " + str(tmp_path / "analyzer.ini") + "\n",
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"Remote working directory: {inst.data_dir}" in result.stdout
    listed = {line.strip() for line in result.stdout.splitlines() if not line.startswith("sftp>")}
    assert {"config", "logs", "qc"} <= listed
    assert "model = Roche cobas c 503" in (tmp_path / "analyzer.ini").read_text()


def test_a_key_other_than_the_injected_one_is_refused(
    openssh_instrument: OpenSSHInstrument, tmp_path: Path
) -> None:
    """Only the instrument credential logs in; any other key gets 'Permission denied'."""
    other = tmp_path / "other_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)],
        check=True,
        timeout=TIMEOUT_S,
    )
    result = _ssh(openssh_instrument, tmp_path, "true", key=other)
    assert result.returncode == 255
    assert "Permission denied" in result.stderr


def test_a_wrong_pinned_host_key_stops_the_client(
    openssh_instrument: OpenSSHInstrument, tmp_path: Path
) -> None:
    """Clients pinning a different host key refuse to talk to the instrument."""
    inst = openssh_instrument
    fake = tmp_path / "fake_host"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(fake)], check=True, timeout=30
    )
    known = tmp_path / "known_hosts"
    fake_key = " ".join((tmp_path / "fake_host.pub").read_text().split()[:2])
    known.write_text(f"[{inst.host}]:{inst.port} {fake_key}\n")
    argv = ["ssh", "-p", str(inst.port), *_ssh_opts(inst, known, inst.client_key_path)]
    result = subprocess.run(
        [*argv, f"{inst.username}@{inst.host}", "true"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 255
    assert "HOST IDENTIFICATION HAS CHANGED" in result.stderr


def test_fingerprint_matches_what_ssh_keygen_prints(
    openssh_instrument: OpenSSHInstrument, tmp_path: Path
) -> None:
    """The advertised SHA256 fingerprint is the one OpenSSH computes for the host key."""
    pub = tmp_path / "host.pub"
    pub.write_text(openssh_instrument.host_public_key + "\n")
    out = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(pub)],
        capture_output=True,
        text=True,
        check=True,
        timeout=TIMEOUT_S,
    ).stdout
    assert out.split()[1] == openssh_instrument.host_key_fingerprint


def test_stop_closes_the_port(tmp_path: Path) -> None:
    """After stop() nothing listens on the instrument's port any more."""
    inst = OpenSSHInstrument(tmp_path).start()
    port = inst.port
    inst.stop()
    assert not inst.running
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


async def test_asyncssh_client_with_injected_key_gets_a_shell_in_the_data_dir(
    openssh_instrument: OpenSSHInstrument,
) -> None:
    """What the broker does: key from PEM, pinned host key, pty shell starting in the data dir."""
    inst = openssh_instrument
    async with asyncssh.connect(
        inst.host,
        inst.port,
        username=inst.username,
        client_keys=[asyncssh.import_private_key(inst.client_private_key_pem)],
        known_hosts=asyncssh.import_known_hosts(inst.known_hosts_line() + "\n"),
        agent_path=None,
        config=None,
        connect_timeout=TIMEOUT_S,
    ) as conn:
        proc = await conn.create_process(term_type="xterm", term_size=(80, 24))
        proc.stdin.write("echo READY-$((6*7)); pwd; head -1 config/analyzer.ini; exit\n")
        out = await asyncio.wait_for(proc.stdout.read(), TIMEOUT_S)
        await asyncio.wait_for(proc.wait(), TIMEOUT_S)
    assert "READY-42" in out
    assert str(inst.data_dir) in out
    assert "; analyzer configuration" in out
