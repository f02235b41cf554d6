"""The lab's RDP desktop ``an-pc-1``: Debian's xrdp (unprivileged, its own ini) in front
of its own Xvnc showing the "Analyzer PC" window.

Proved here, on the real programs: the instrument is described as ``rdp`` with only
xrdp's port (the Xvnc behind it is not offered to the gateway), the user ``service``
and a password in a 0600 file; xrdp answers an RDP client's connection request by
choosing TLS and presents the certificate whose fingerprint the description gives
(what the broker pins); the Xvnc shows a window titled "Analyzer PC"; stopping the
lab closes the port.  Without xrdp the instrument refuses to start, saying what to
install, and nothing listens.
"""

from __future__ import annotations

import hashlib
import shutil
import socket
import ssl
import struct
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from labsim import Lab, LabsimError, render_allowlist_toml
from labsim.rdp import XrdpDesktop, xrdp_available


def _connection_request() -> bytes:
    """TPKT + X.224 Connection Request carrying an RDP Negotiation Request for TLS."""
    neg = struct.pack("<BBHI", 0x01, 0, 8, 0x00000001)  # RDP_NEG_REQ, PROTOCOL_SSL
    x224 = bytes((6 + len(neg), 0xE0, 0, 0, 0, 0, 0)) + neg
    return struct.pack(">BBH", 3, 0, 4 + len(x224)) + x224


def _tls_certificate(host: str, port: int) -> tuple[int, bytes]:
    """The protocol xrdp selects for a TLS-only client, and the certificate it sends."""
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.settimeout(10)
        sock.sendall(_connection_request())
        reply = b""
        while len(reply) < 4 or len(reply) < struct.unpack(">H", reply[2:4])[0]:
            chunk = sock.recv(256)
            assert chunk, f"xrdp closed the connection after {reply!r}"
            reply += chunk
        kind, _flags, _len, selected = struct.unpack("<BBHI", reply[11:19])
        assert kind == 0x02, f"no RDP negotiation response: {reply.hex()}"
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the certificate is self-signed: compared below
        with ctx.wrap_socket(sock) as tls:
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            return selected, der


@pytest.fixture(scope="module")
def rdp_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    assert xrdp_available() is None, (
        f"{xrdp_available()}: install xrdp, tigervnc-standalone-server, tigervnc-tools "
        "and xterm (./run does)"
    )
    lab = Lab(tmp_path_factory.mktemp("rdp-lab"), names=["an-pc-1"]).start()
    yield lab
    lab.stop()


def test_the_analyzer_pc_is_an_rdp_instrument_with_only_xrdps_port(rdp_lab: Lab) -> None:
    inst = rdp_lab["an-pc-1"]
    desk = rdp_lab.part("an-pc-1", XrdpDesktop)
    assert (
        inst.protocol == "rdp"
        and inst.ports == (desk.port,)
        and inst.services == {"rdp": desk.port}
    )
    assert desk.vnc.port not in inst.ports  # the Xvnc behind xrdp is not the gateway's
    assert inst.credentials is not None and inst.credentials.username == "service"
    assert inst.credentials.password_path is not None
    assert inst.credentials.password_path.stat().st_mode & 0o777 == 0o600
    password = inst.credentials.password
    assert password is not None and len(password) == 8  # what VNC authentication keeps
    assert password not in str(inst.to_json())
    [table] = tomllib.loads(render_allowlist_toml([inst]))["instrument"]
    assert table["protocol"] == "rdp" and table["ports"] == [desk.port]


def test_xrdp_chooses_tls_and_presents_the_described_certificate(rdp_lab: Lab) -> None:
    inst = rdp_lab["an-pc-1"]
    selected, der = _tls_certificate(inst.host, inst.port)
    assert selected == 0x00000001  # PROTOCOL_SSL
    assert inst.host_key_fingerprint == "SHA256:" + hashlib.sha256(der).hexdigest()


def test_the_desktop_shows_the_analyzer_pc_window(rdp_lab: Lab) -> None:
    desk = rdp_lab.part("an-pc-1", XrdpDesktop)
    tree = subprocess.run(
        ["xwininfo", "-root", "-tree", "-display", desk.vnc.display],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout
    assert '"Analyzer PC"' in tree, tree[-1000:]


def test_stopping_the_lab_closes_the_rdp_port(tmp_path: Path) -> None:
    lab = Lab(tmp_path, names=["an-pc-1"]).start()
    inst = lab["an-pc-1"]
    vnc_port = lab.part("an-pc-1", XrdpDesktop).vnc.port
    lab.stop()
    for port in (inst.port, vnc_port):
        with socket.socket() as s:
            assert s.connect_ex((inst.host, port)) != 0, f"port {port} still answers"


def test_without_xrdp_the_analyzer_pc_says_what_to_install_and_starts_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"  # Xvnc, vncpasswd and xterm, but no xrdp
    bin_dir.mkdir()
    for prog in ("Xvnc", "vncpasswd", "xterm"):
        found = shutil.which(prog)
        assert found, f"install {prog} (./run does)"
        (bin_dir / prog).symlink_to(found)
    monkeypatch.setenv("PATH", str(bin_dir))
    assert xrdp_available() == "xrdp not installed (Debian xrdp)"
    desk = XrdpDesktop(tmp_path)
    with pytest.raises(LabsimError, match="an-pc-1: xrdp not installed"):
        desk.start()
    assert desk.port == 0 and not desk.dir.exists()
