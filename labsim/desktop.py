"""A desktop instrument: the LIS workstation, a real VNC server with a small desktop.

TigerVNC's ``Xvnc`` (Debian ``tigervnc-standalone-server``) on a loopback port, VNC
authentication with a password made for this lab (in a 0600 file, handed to the
broker as the instrument's stored credential), showing one ``xterm`` titled "LIS
workstation" whose shell keeps what is typed in ``typed.txt``.  Started only when
those programs are installed (:func:`desktop_available`); the demo says so and
goes on without it otherwise.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import shutil
import socket
import subprocess
from pathlib import Path

from labsim.errors import LabsimError
from labsim.model import Credentials, Instrument
from labsim.net import LOOPBACK

NAME = "lis-ws-1"
PROGRAMS = ("Xvnc", "vncpasswd", "xterm")
START_TIMEOUT_S = 10.0


def desktop_available() -> str | None:
    """None when the desktop instrument can start here, else what is missing."""
    missing = [p for p in PROGRAMS if shutil.which(p) is None]
    if not missing:
        return None
    debian = "tigervnc-standalone-server, tigervnc-tools, xterm"
    return f"{', '.join(missing)} not installed (Debian {debian})"


class XvncDesktop:
    """Xvnc plus an xterm on it; :meth:`start` returns the instrument's description."""

    def __init__(
        self,
        workdir: Path,
        *,
        name: str = NAME,
        host: str = LOOPBACK,
        geometry: str = "1024x768",
        title: str = "LIS workstation",
        background: str = "#103060",
    ) -> None:
        self.dir = workdir / name
        self.name = name
        self.host = host
        self.geometry = geometry
        self.title = title  # the X desktop's name and the xterm's window title
        self.background = background
        self.typed = self.dir / "typed.txt"
        self._procs: list[subprocess.Popen[bytes]] = []
        self.port = 0
        self.display = ""

    def start(self) -> Instrument:
        why = desktop_available()
        if why is not None:
            raise LabsimError(f"{self.name}: {why}")
        self.dir.mkdir(parents=True, exist_ok=True)
        password = secrets.token_urlsafe(12)[:8]  # VNC authentication uses 8 characters
        password_path = self.dir / "vnc-password"
        password_path.touch(mode=0o600)
        password_path.write_text(password)  # no newline: the file is the credential
        pwfile = self.dir / "vncpasswd"
        pwfile.write_bytes(
            subprocess.run(
                ["vncpasswd", "-f"],
                input=password.encode(),
                capture_output=True,
                check=True,
                timeout=START_TIMEOUT_S,
            ).stdout
        )
        pwfile.chmod(0o600)
        self.port = _free_port(self.host)
        r, w = os.pipe()
        log = (self.dir / "xvnc.log").open("wb")
        try:
            server = subprocess.Popen(
                ["Xvnc", "-displayfd", str(w), "-rfbport", str(self.port),
                 "-localhost", "-interface", self.host, "-SecurityTypes", "VncAuth",
                 "-PasswordFile", str(pwfile), "-geometry", self.geometry, "-depth", "24",
                 "-AlwaysShared", "-nolisten", "tcp", "-desktop", self.title],
                pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=log,
            )  # fmt: skip
        finally:
            os.close(w)
            log.close()
        self._procs.append(server)
        with os.fdopen(r) as f:
            number = f.readline().strip()
        if not number:
            self.stop()
            raise LabsimError(f"{self.name}: Xvnc did not start: {self._log_tail()}")
        self.display = f":{number}"
        self._procs.append(
            subprocess.Popen(
                [
                    "xterm",
                    "-display",
                    self.display,
                    "-geometry",
                    "100x30+40+40",
                    "-title",
                    self.title,
                    "-bg",
                    self.background,
                    "-fg",
                    "white",
                    "-e",
                    "sh",
                    "-c",
                    f"echo {shlex.quote(self.title + ' - type here')}; "
                    f"cat > {shlex.quote(str(self.typed))}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        return Instrument(
            name=self.name,
            host=self.host,
            ports=(self.port,),
            protocol="rfb",
            department="laboratory",
            model="LIS workstation (Xvnc desktop)",
            backend="xvnc",
            services={"rfb": self.port},
            credentials=Credentials(username="", password_path=password_path),
            data_dir=self.dir,
        )

    def stop(self) -> None:
        for p in reversed(self._procs):
            p.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(5)
            if p.poll() is None:
                p.kill()
        self._procs.clear()

    def _log_tail(self) -> str:
        path = self.dir / "xvnc.log"
        return path.read_text(errors="replace")[-400:] if path.exists() else ""


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
