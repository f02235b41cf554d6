"""The simulated laboratory: a named set of instruments started together on loopback.

==================  ==========================================  =======================
name                what it is                                  backend / protocol
==================  ==========================================  =======================
cobas-c503-1        clinical-chemistry analyzer PC              OpenSSH sshd (asyncssh
                                                                fallback) / ssh
las-line-a          laboratory automation line controller       asyncssh / ssh, plus an
                                                                echo maintenance port
lis-hl7             LIS host interface                          HL7 v2 over MLLP
xn-1000-1           hematology analyzer service screen          RFB 3.8 (VNC-like)
lis-astm            LIS ASTM host port                          ASTM E1381/E1394
lis-ws-1            LIS workstation desktop (asked by name      TigerVNC Xvnc + xterm /
                    only: needs Debian's Xvnc and xterm)        VNC (VNC authentication)
an-pc-1             Analyzer PC desktop (asked by name only:    xrdp in front of Xvnc +
                    needs Debian's xrdp, Xvnc and xterm)        xterm / RDP (TLS, password)
==================  ==========================================  =======================

Blocking API (usable from sync and async tests alike): asyncio instruments run
on a private background loop; the sshd instrument is a child process.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections.abc import Coroutine, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, TypeVar

from labsim.allowlist import render_allowlist_toml
from labsim.analyzer import AnalyzerServer, AnalyzerSettings
from labsim.background import BackgroundLoop
from labsim.desktop import XvncDesktop
from labsim.errors import LabsimError
from labsim.model import Instrument
from labsim.net import LOOPBACK
from labsim.rdp import XrdpDesktop
from labsim.services.astm import AstmService
from labsim.services.base import TcpService
from labsim.services.echo import EchoService
from labsim.services.hl7 import Hl7Service
from labsim.services.rfb import RfbService
from labsim.sshd import OpenSSHInstrument, openssh_available

ALL_INSTRUMENTS = ("cobas-c503-1", "las-line-a", "lis-hl7", "xn-1000-1", "lis-astm")
DESKTOP_INSTRUMENTS = ("lis-ws-1", "an-pc-1")  # real desktops, started only when asked by name
START_TIMEOUT_S = 30.0

T = TypeVar("T")


class _AsyncPart(Protocol):
    async def close(self) -> None: ...


P = TypeVar("P", bound=_AsyncPart)


class Lab:
    """Starts, describes and stops the simulated instruments.

    ``Lab(names=[...])`` picks a subset; ``openssh=False`` forces the asyncssh
    analyzer for ``cobas-c503-1`` (default: real sshd when installed).
    """

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        names: Iterable[str] | None = None,
        openssh: bool | None = None,
        host: str = LOOPBACK,
    ) -> None:
        wanted = tuple(names) if names is not None else ALL_INSTRUMENTS
        unknown = [n for n in wanted if n not in ALL_INSTRUMENTS + DESKTOP_INSTRUMENTS]
        if unknown:
            known = ", ".join(ALL_INSTRUMENTS + DESKTOP_INSTRUMENTS)
            raise ValueError(f"unknown instrument(s) {', '.join(unknown)}; known: {known}")
        self.names = wanted
        self.host = host
        self._use_openssh = openssh_available() if openssh is None else openssh
        self._owns_dir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="hoshu-lab-"))
        self._bg: BackgroundLoop | None = None
        self._async_parts: list[_AsyncPart] = []
        self._parts: dict[str, Any] = {}
        self._openssh: list[OpenSSHInstrument] = []
        self._desktops: list[XvncDesktop | XrdpDesktop] = []
        self.instruments: dict[str, Instrument] = {}

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> Lab:
        """Start every chosen instrument; on any failure stop what started and raise."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._bg = BackgroundLoop().start()
        try:
            for name in self.names:
                self.instruments[name] = self._start_one(name)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every instrument and the background loop; safe to call twice."""
        for inst in self._openssh:
            inst.stop()
        self._openssh.clear()
        for desk in self._desktops:
            desk.stop()
        self._desktops.clear()
        bg, self._bg = self._bg, None
        if bg is not None:
            for part in reversed(self._async_parts):
                try:
                    bg.run(part.close(), 10.0)
                except (LabsimError, OSError, TimeoutError):
                    pass
            bg.stop()
        self._async_parts.clear()
        if self._owns_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Lab:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- starting instruments ----------------------------------------------------------

    def _run(self, part: P, coro: Coroutine[Any, Any, object]) -> P:
        if self._bg is None:
            coro.close()
            raise LabsimError("lab not started")
        self._bg.run(coro, START_TIMEOUT_S)
        self._async_parts.append(part)
        return part

    def _analyzer(self, name: str, settings: AnalyzerSettings) -> AnalyzerServer:
        server = AnalyzerServer(self.workdir, settings)
        return self._run(server, server.start())

    def _service(self, service: TcpService) -> TcpService:
        return self._run(service, service.start())

    def _start_one(self, name: str) -> Instrument:
        h = self.host
        if name == "cobas-c503-1":
            model, dept = "Roche cobas c 503", "clinical-chemistry"
            if self._use_openssh:
                sshd = OpenSSHInstrument(self.workdir, name=name, model=model,
                                         department=dept, host=h)  # fmt: skip
                self._openssh.append(sshd)
                self._parts[name] = sshd.start()
                return sshd.info
            settings = AnalyzerSettings(name=name, model=model, department=dept, host=h)
            fallback = self._analyzer(name, settings)
            self._parts[name] = fallback
            return fallback.info
        if name == "las-line-a":
            server = self._analyzer(name, AnalyzerSettings(name=name, host=h))
            echo = self._service(EchoService(name=name, host=h))
            self._parts[name] = server
            self._parts[f"{name}/echo"] = echo
            base = server.info
            return dataclasses.replace(
                base,
                ports=(server.port, echo.port),
                services={"ssh": server.port, "echo": echo.port},
            )
        if name in DESKTOP_INSTRUMENTS:
            desk: XvncDesktop | XrdpDesktop
            if name == "an-pc-1":
                desk = XrdpDesktop(self.workdir, name=name, host=h)
            else:
                desk = XvncDesktop(self.workdir, name=name, host=h)
            self._desktops.append(desk)
            self._parts[name] = desk
            return desk.start()
        service: TcpService
        if name == "lis-hl7":
            service = Hl7Service(name=name, host=h)
        elif name == "xn-1000-1":
            service = RfbService(name=name, host=h)
        else:
            service = AstmService(name=name, host=h)
        self._parts[name] = self._service(service)
        return service.info

    # -- access ----------------------------------------------------------------------

    def __getitem__(self, name: str) -> Instrument:
        return self.instruments[name]

    def part(self, name: str, kind: type[T]) -> T:
        """The running object behind an instrument, e.g. ``lab.part("lis-hl7", Hl7Service)``.

        ``"las-line-a/echo"`` names the LAS controller's echo port.
        """
        obj = self._parts.get(name)
        if not isinstance(obj, kind):
            raise LabsimError(f"{name} is not a running {kind.__name__}")
        return obj

    def describe(self) -> dict[str, Any]:
        """JSON-ready description of the lab (what ``python -m labsim`` prints)."""
        return {
            "workdir": str(self.workdir),
            "instruments": [i.to_json() for i in self.instruments.values()],
        }

    def allowlist_toml(self, *, include_host_keys: bool = False) -> str:
        """The gateway allowlist for the running instruments."""
        return render_allowlist_toml(self.instruments.values(), include_host_keys=include_host_keys)
