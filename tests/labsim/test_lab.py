"""The whole lab: every instrument answers, the allowlist parses, `python -m labsim` runs."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import paramiko
import pytest

from labsim import ALL_INSTRUMENTS, Hl7Service, Lab, fingerprint_of, render_allowlist_toml
from labsim.net import read_banner
from tests.support import poll_sync

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 20.0


def test_every_instrument_listens_on_loopback(lab: Lab) -> None:
    """Each named instrument is up on 127.0.0.1 and every port it lists accepts TCP."""
    assert list(lab.instruments) == list(ALL_INSTRUMENTS)
    for inst in lab.instruments.values():
        assert inst.host == "127.0.0.1"
        for port in inst.ports:
            with socket.create_connection((inst.host, port), timeout=5):
                pass


def test_ssh_instruments_present_their_advertised_host_keys(lab: Lab) -> None:
    """The SSH banner answers and the fingerprint matches the advertised host key."""
    for name in ("cobas-c503-1", "las-line-a"):
        inst = lab[name]
        assert read_banner(inst.host, inst.port).startswith(b"SSH-2.0-")
        assert inst.host_key is not None
        assert inst.host_key_fingerprint == fingerprint_of(inst.host_key)
    assert lab["cobas-c503-1"].backend == "openssh"


def test_injected_credential_logs_into_the_las_controller(lab: Lab) -> None:
    """The credentials in the description (paths only) are enough to log in."""
    inst = lab["las-line-a"]
    creds = inst.credentials
    assert creds is not None and creds.password_path is not None
    assert creds.password_path.stat().st_mode & 0o077 == 0
    assert inst.host_key is not None
    client = paramiko.SSHClient()
    blob = base64.b64decode(inst.host_key.split()[1])
    client.get_host_keys().add(
        f"[{inst.host}]:{inst.port}", "ssh-ed25519", paramiko.Ed25519Key(data=blob)
    )
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        inst.host,
        inst.port,
        username=creds.username,
        password=creds.password,
        look_for_keys=False,
        allow_agent=False,
        timeout=TIMEOUT_S,
    )
    try:
        _, out, _ = client.exec_command("show config", timeout=TIMEOUT_S)
        assert "name = las-line-a" in out.read().decode()
    finally:
        client.close()


def test_running_parts_are_reachable_by_name(lab: Lab) -> None:
    hl7 = lab.part("lis-hl7", Hl7Service)
    assert hl7.port == lab["lis-hl7"].port
    assert lab["las-line-a"].service_port("echo") == lab["las-line-a"].ports[1]


def test_allowlist_toml_lists_every_instrument(lab: Lab) -> None:
    """The gateway allowlist parses as TOML with the required fields and the real ports."""
    doc = tomllib.loads(lab.allowlist_toml())
    rows = {row["name"]: row for row in doc["instrument"]}
    assert set(rows) == set(ALL_INSTRUMENTS)
    for name, row in rows.items():
        assert set(row) == {"name", "host", "ports", "protocol", "department", "model"}
        assert row["ports"] == list(lab[name].ports)
    assert rows["lis-hl7"]["protocol"] == "hl7"  # the gateway's vocabulary


def test_allowlist_escapes_awkward_strings() -> None:
    """Quotes, backslashes and non-ASCII survive the TOML rendering unchanged."""
    from labsim import Instrument

    odd = Instrument(
        name="x",
        host="127.0.0.1",
        ports=(1, 2),
        protocol="tcp",
        department='lab "B" \\ 検査部',
        model="m\n1",
        backend="tcp",
    )
    row = tomllib.loads(render_allowlist_toml([odd]))["instrument"][0]
    assert row["department"] == 'lab "B" \\ 検査部'
    assert row["model"] == "m\n1"


def test_unknown_instrument_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown instrument"):
        Lab(tmp_path, names=["cobas-c503-1", "no-such-thing"])


def test_lab_falls_back_to_asyncssh_without_openssh(tmp_path: Path) -> None:
    """With OpenSSH unavailable, cobas-c503-1 is served by the asyncssh analyzer."""
    with Lab(tmp_path, names=["cobas-c503-1"], openssh=False) as small:
        inst = small["cobas-c503-1"]
        assert inst.backend == "asyncssh"
        assert read_banner(inst.host, inst.port).startswith(b"SSH-2.0-AsyncSSH")


def test_python_m_labsim_prints_json_and_stops_on_sigterm(tmp_path: Path) -> None:
    """The foreground runner prints a valid description, then SIGTERM stops it cleanly."""
    out_file = tmp_path / "lab.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "labsim", "--json-out", str(out_file),
         "--workdir", str(tmp_path / "lab")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:

        def written() -> bool:
            assert proc.poll() is None, proc.communicate(timeout=5)
            return out_file.exists()

        poll_sync(written, TIMEOUT_S, "the lab description written", interval_s=0.05)
        doc = json.loads(out_file.read_text())
        names = [i["name"] for i in doc["instruments"]]
        assert names == list(ALL_INSTRUMENTS)
        hl7 = next(i for i in doc["instruments"] if i["name"] == "lis-hl7")
        with socket.create_connection(("127.0.0.1", hl7["ports"][0]), timeout=5):
            pass
        ssh_port = doc["instruments"][0]["ports"][0]
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=5)
    assert proc.returncode == 0, stderr
    assert json.loads(stdout) == doc
    assert "stopped" in stderr
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", ssh_port), timeout=2):
        pass
