"""An RDP desktop instrument: the analyzer PC, Debian's xrdp in front of its own Xvnc.

``an-pc-1`` is what a vendor engineer meets on an analyzer's Windows-like service PC:
an RDP server.  Here it is Debian's ``xrdp``, run unprivileged with its own ini
(:data:`XRDP_INI`): TLS only, a self-signed certificate made for this lab, and the
``vnc-any`` module that hands the RDP login's password to a TigerVNC ``Xvnc`` behind
it (loopback only, never in the gateway's allowlist).  The Xvnc shows one ``xterm``
titled "Analyzer PC" whose shell keeps what is typed in ``typed.txt``
(:class:`labsim.desktop.XvncDesktop`).

The hospital's stored credential is the user ``service`` and the lab's password (in a
0600 file); the certificate's fingerprint (``SHA256:`` and the hex SHA-256 of the DER
certificate, the broker's pin format) is the instrument's ``host_key_fingerprint``,
so a test can check that the broker pinned this very certificate.

Started only when the programs are installed (:func:`xrdp_available`); the demo says
so and goes on without it otherwise.  Failures raise
:class:`labsim.errors.InstrumentStartError` with the tail of xrdp's log.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import shutil
import socket
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from labsim.desktop import XvncDesktop, desktop_available
from labsim.errors import LabsimError
from labsim.model import Credentials, Instrument
from labsim.net import LOOPBACK, free_port, poll_until

NAME = "an-pc-1"
TITLE = "Analyzer PC"
USERNAME = "service"  # xrdp's vnc-any ignores it; the broker needs a stored user for RDP
START_TIMEOUT_S = 15.0

XRDP_INI = """[Globals]
ini_version=1
fork=false
port=tcp://127.0.0.1:{port}
use_vsock=false
tcp_nodelay=true
security_layer={security}
crypt_level=high
certificate={cert}
key_file={key}
ssl_protocols=TLSv1.2, TLSv1.3
autorun=vnc-any
allow_channels=false
bitmap_cache=true
bitmap_compression=true
bulk_compression=false
max_bpp=32
new_cursors=true
use_fastpath=both
require_credentials=true
[Logging]
LogFile={log}
LogLevel=INFO
EnableSyslog=false
EnableConsole=false
[Channels]
rdpdr=false
rdpsnd=false
drdynvc=false
cliprdr=false
rail=false
xrdpvr=false
tcutils=false
[vnc-any]
name=vnc-any
lib=libvnc.so
ip=127.0.0.1
port={vnc_port}
username=na
password=ask
"""


class VncServer(Protocol):
    """What xrdp needs of the VNC server behind it: its loopback port."""

    port: int


def xrdp_available() -> str | None:
    """None when the RDP desktop instrument can start here, else what is missing."""
    missing = desktop_available()
    if shutil.which("xrdp") is None:
        return f"xrdp not installed (Debian xrdp){'; ' + missing if missing else ''}"
    return missing


def start_xrdp(
    workdir: Path, vnc: VncServer, port: int, name: str, security: str = "tls"
) -> subprocess.Popen[bytes]:
    """xrdp on ``port`` (TLS only, the certificate ``workdir/name.crt`` and its key;
    ``security`` ``rdp``: standard RDP security only): the RDP client's password is the
    VNC password of the Xvnc behind it (xrdp's ``vnc-any`` module).  Its log is
    ``workdir/xrdp-PORT.log``; returns at once (the caller waits for the port)."""
    cert, key = workdir / f"{name}.crt", workdir / f"{name}.key"
    ini = workdir / f"xrdp-{port}.ini"
    ini.write_text(
        XRDP_INI.format(
            port=port,
            cert=cert,
            key=key,
            log=workdir / f"xrdp-{port}.log",
            vnc_port=vnc.port,
            security=security,
        )
    )
    return subprocess.Popen(
        ["xrdp", "--nodaemon", "--config", str(ini)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def self_signed_certificate(
    workdir: Path, name: str, *, now: datetime | None = None
) -> tuple[Path, Path]:
    """A self-signed certificate (P-256, ten years from the day before ``now``, the
    present by default) and its 0600 key, as ``workdir/name.crt`` and ``workdir/name.key``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = now or datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = workdir / f"{name}.crt", workdir / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.touch(mode=0o600)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def certificate_fingerprint(cert_path: Path) -> str:
    """``SHA256:`` and the hex SHA-256 of the PEM certificate's DER form."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return "SHA256:" + hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


class XrdpDesktop:
    """xrdp in front of an Xvnc with the analyzer's xterm; :meth:`start` returns the
    instrument's description (protocol ``rdp``, the xrdp port only)."""

    def __init__(
        self,
        workdir: Path,
        *,
        name: str = NAME,
        host: str = LOOPBACK,
        geometry: str = "1024x768",
    ) -> None:
        self.name = name
        self.host = host
        # the Xvnc behind xrdp, in the same directory (typed.txt, vnc-password)
        self.vnc = XvncDesktop(
            workdir, name=name, host=host, geometry=geometry, title=TITLE, background="#603010"
        )
        self.dir = self.vnc.dir
        self.typed = self.vnc.typed
        self.port = 0
        self.cert = self.dir / f"{name}.crt"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Instrument:
        why = xrdp_available()
        if why is not None:
            raise LabsimError(f"{self.name}: {why}")
        desk = self.vnc.start()
        try:
            self.cert, _key = self_signed_certificate(self.dir, self.name)
            self.port = free_port(self.host)
            proc = self._proc = start_xrdp(self.dir, self.vnc, self.port, self.name)
            poll_until(
                lambda: _listening(self.host, self.port),
                deadline_s=START_TIMEOUT_S,
                what=f"{self.name}: xrdp on port {self.port}",
                alive=lambda: (
                    None
                    if proc.poll() is None
                    else f"xrdp exited ({proc.returncode}): {self._log_tail()}"
                ),
            )
        except BaseException:
            self.stop()
            raise
        assert desk.credentials is not None
        return dataclasses.replace(
            desk,
            ports=(self.port,),
            protocol="rdp",
            model=f"{TITLE} (xrdp in front of Xvnc)",
            backend="xrdp",
            services={"rdp": self.port},
            credentials=Credentials(
                username=USERNAME, password_path=desk.credentials.password_path
            ),
            host_key_fingerprint=certificate_fingerprint(self.cert),
        )

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        self.vnc.stop()

    def _log_tail(self) -> str:
        path = self.dir / f"xrdp-{self.port}.log"
        return path.read_text(errors="replace")[-400:] if path.exists() else ""


def _listening(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


__all__ = [
    "NAME",
    "XRDP_INI",
    "VncServer",
    "XrdpDesktop",
    "certificate_fingerprint",
    "self_signed_certificate",
    "start_xrdp",
    "xrdp_available",
]
