"""Fixtures of the desktop tests: a real VNC server as the instrument, behind a real
hospital gateway, and the broker's desktop gate with the store's real access policy.

The instrument is TigerVNC's ``Xvnc`` (VNC authentication with a password the
hospital stored in hoshu) showing one ``xterm`` with a green background whose
shell writes what is typed into a file, so a test sees both the screen and the
keys that reached it.  The broker reaches it only through the gateway's reverse
tunnel (``TunnelConnector``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from audit.recstore.files import FileStore
from audit.testing import CapturingEmitter
from broker.access import totp
from broker.access.door import Engineer
from broker.access.model import Instrument
from broker.access.people import NewUser
from broker.access.ports import Actor
from broker.access.services import Services
from broker.api.app import create_app
from broker.desktop.pins import CertificatePins
from broker.desktop.session import DesktopGate
from broker.live.sessions import SessionRegistry
from broker.settings import BrokerSettings
from broker.store.db import Store
from broker.tunnel.connector import TunnelConnector
from labsim.rdp import self_signed_certificate
from labsim.rdp import start_xrdp as start_xrdp  # the tests import it from here
from tests.control.conftest import PASSWORD, actor_for, make_context, openssh_public_key
from tests.frontdoor.harness import T0
from tests.frontdoor.store_policy import StorePolicy
from tests.gateway.harness import GATEWAY_ID, lab
from tests.support import FakeClock, poll, poll_sync

VNC_PASSWORD = "vnc-s3cret"
INSTRUMENT = "xvnc-1"
GREEN = (0, 160, 0)


@dataclass
class Xvnc:
    port: int
    display: str
    typed: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def xvnc(tmp_path: Path) -> Iterator[Xvnc]:
    """Xvnc on a loopback port (VNC authentication), an xterm on it that keeps what is typed."""
    assert shutil.which("Xvnc") and shutil.which("vncpasswd") and shutil.which("xterm"), (
        "install tigervnc-standalone-server, tigervnc-tools and xterm (./run does)"
    )
    pwfile = tmp_path / "vncpasswd"
    pwfile.write_bytes(
        subprocess.run(
            ["vncpasswd", "-f"], input=VNC_PASSWORD.encode(), capture_output=True, check=True
        ).stdout
    )
    port = _free_port()
    r, w = os.pipe()
    server = subprocess.Popen(
        [
            "Xvnc",
            "-displayfd",
            str(w),
            "-rfbport",
            str(port),
            "-localhost",
            "-interface",
            "127.0.0.1",
            "-SecurityTypes",
            "VncAuth",
            "-PasswordFile",
            str(pwfile),
            "-geometry",
            "800x600",
            "-depth",
            "24",
            "-AlwaysShared",
            "-nolisten",
            "tcp",
        ],
        pass_fds=(w,),
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "xvnc.log", "wb"),
    )
    os.close(w)
    with os.fdopen(r) as f:
        number = f.readline().strip()
    assert number, (tmp_path / "xvnc.log").read_text()
    display = f":{number}"
    typed = tmp_path / "typed.txt"
    term = subprocess.Popen(
        [
            "xterm",
            "-display",
            display,
            "-geometry",
            "120x45+0+0",
            "-bg",
            "#00a000",
            "-fg",
            "white",
            "-e",
            "sh",
            "-c",
            f"stty -echo; cat > {typed}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield Xvnc(port, display, typed)
    finally:
        for p in (term, server):
            p.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(5)
            if p.poll() is None:
                p.kill()


class AnyGateway:
    """The lab's one gateway answers for the gateway the store enrolled."""

    def __init__(self, registry: Any) -> None:
        self.registry = registry

    def tunnel(self, gateway_id: str, session_id: str, engineer: str) -> Any:
        return self.registry.tunnel(GATEWAY_ID, session_id, engineer)


@dataclass
class Desk:
    policy: StorePolicy
    s: Services
    gate: DesktopGate
    registry: SessionRegistry
    store: FileStore
    events: CapturingEmitter
    clock: FakeClock
    app: Any
    eng: Engineer
    port: int
    other_port: int
    xvnc: Xvnc
    secrets: dict[str, str]

    def actor(self, name: str) -> Actor:
        return self.policy.actors[name]

    def code(self, name: str) -> str:
        """A TOTP code for ``name`` (enrolled on first use); the clock moves 30 s after."""
        if name not in self.secrets:
            uri = self.s.auth.totp_begin(self.actor(name))
            secret = uri.split("secret=")[1].split("&")[0]
            self.s.auth.totp_confirm(
                self.actor(name), totp.code_at(secret, self.clock() - timedelta(seconds=30))
            )
            self.secrets[name] = secret
        return totp.code_at(self.secrets[name], self.clock())

    def grant(self, port: int | None = None) -> str:
        return self.policy.grant(
            self.eng, INSTRUMENT, (port or self.port,), ends=self.clock.now + timedelta(hours=1)
        ).grant_id

    def pin(self, fingerprint: str) -> None:
        """The instrument's pinned key or certificate is ``fingerprint`` (another one
        than the server shows: a server that changed since it was pinned)."""
        with self.s.ctx.uow() as tx:
            inst = tx.one(Instrument, name=INSTRUMENT)
            assert inst is not None
            inst.host_key_fingerprint = fingerprint
            tx.save(inst)


@pytest.fixture
async def desk(tmp_path: Path, xvnc: Xvnc) -> AsyncIterator[Desk]:
    async with open_desk(tmp_path, xvnc) as d:
        yield d


@contextlib.asynccontextmanager
async def open_desk(
    tmp_path: Path,
    xvnc: Xvnc,
    *,
    protocol: str = "vnc",
    port: int | None = None,
    password: str = VNC_PASSWORD,
    instrument: str = INSTRUMENT,
    username: str | None = None,
    keyboard_layout: str = "en-US",
    **gate_options: Any,
) -> AsyncIterator[Desk]:
    """The desk: an instrument at ``port`` (Xvnc's by default) of ``protocol``, typed on
    with ``keyboard_layout``."""
    port = port or xvnc.port
    clock = FakeClock(T0)
    events = CapturingEmitter()
    store = Store(f"sqlite:///{tmp_path / 'control.db'}", migrate=True)
    s = Services.build(make_context(store, events, clock))
    root, _ = s.auth.bootstrap("root", "Platform Admin", PASSWORD)
    admin = actor_for(s, root)
    hospital = s.people.create_org(admin, "hoshi-hospital", "hospital")
    vendor = s.people.create_org(admin, "roche", "vendor")
    other = s.people.create_org(admin, "tsuki-hospital", "hospital")
    actors: dict[str, Actor] = {"root": admin}
    for name, org, role in (
        ("alice", vendor, "engineer"),
        ("appr", hospital, "approver"),
        ("appr2", hospital, "approver"),
        ("hadmin", hospital, "hospital_admin"),
        ("aud", hospital, "auditor"),
        ("tsuki-appr", other, "approver"),
    ):
        user = s.people.create_user(
            admin, NewUser(name, f"Person {name}", org.name, [role], PASSWORD)
        )
        actors[name] = actor_for(s, user)
    token = s.gateways.issue_token(actors["hadmin"], hospital.name).token
    gw_id = s.gateways.enroll(token, openssh_public_key(), "gw-1", "1.0").gateway_id
    other_port = _free_port()
    s.estate.create_instrument(
        admin,
        hospital.name,
        {
            "name": instrument,
            "host": "127.0.0.1",
            "ports": [port, other_port],
            "gateway": gw_id,
            "protocol": protocol,
            "keyboard_layout": keyboard_layout,
        },
    )
    s.estate.set_credential(actors["hadmin"], instrument, "password", password, username)
    s.estate.create_contract(admin, vendor.name, hospital.name, [instrument])
    policy = StorePolicy(s, store, actors)
    eng = Engineer(actors["alice"].user_id, "alice", vendor.name, roles=frozenset({"engineer"}))
    (tmp_path / "gw").mkdir()
    async with lab(tmp_path / "gw") as L:
        cfg = L.config_path.read_text()
        cfg = cfg.replace('name = "cobas-c503-1"', f'name = "{instrument}"')
        cfg = cfg.replace(f"ports = [{L.echo.port}]", f"ports = [{port}, {other_port}]")
        assert instrument in cfg and str(port) in cfg
        L.config_path.write_text(cfg)
        await L.start_agent()
        await L.listener.registry.wait_for(GATEWAY_ID, 10)
        registry = SessionRegistry(policy, events, clock, interval=0.1)
        watcher = asyncio.create_task(registry.watch())
        (tmp_path / "recordings").mkdir()
        rec_store = FileStore(tmp_path / "recordings")
        ids = iter(f"d{n:04d}" for n in range(1, 10_000))
        gate = DesktopGate(
            policy,
            TunnelConnector(AnyGateway(L.listener.registry)),
            registry,
            events,
            rec_store,
            clock,
            lambda: next(ids),
            **gate_options,
        )
        app = create_app(BrokerSettings(data_dir=tmp_path / "api"), services=s)
        app.state.desktop_gate = lambda: gate
        app.state.desktop_recordings = rec_store
        app.state.live_sessions = lambda: registry
        events.clear()
        try:
            yield Desk(
                policy,
                s,
                gate,
                registry,
                rec_store,
                events,
                clock,
                app,
                eng,
                port,
                other_port,
                xvnc,
                {},
            )
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await poll(lambda: not registry.list(), 5, "the desktop sessions to end")
            store.close()


@contextlib.asynccontextmanager
async def pinned_desk(
    tmp_path: Path,
    xrdp: Xrdp,
    *,
    protocol: str = "rdp",
    rdp_size: tuple[int, int] = (800, 600),
    keyboard_layout: str = "en-US",
) -> AsyncIterator[Desk]:
    """The desk with ``xrdp`` as the instrument: RDP as the stored user ``service`` (or,
    with ``protocol="vnc"``, the Xvnc behind it), the server's certificate checked by
    the store's own pins, as the broker checks it; typed on with ``keyboard_layout``."""
    pins: list[CertificatePins] = []
    rdp = protocol == "rdp"
    async with open_desk(
        tmp_path,
        xrdp.xvnc,
        protocol=protocol,
        port=xrdp.port if rdp else None,
        username="service" if rdp else None,
        rdp_size=rdp_size,
        keyboard_layout=keyboard_layout,
        pin_certificate=lambda i, fp: pins[0](i, fp),
    ) as d:
        pins.append(CertificatePins(d.s))
        yield d


@dataclass
class Xrdp:
    port: int
    xvnc: Xvnc
    cert: Path
    key: Path


def _self_signed(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A throwaway self-signed certificate and key for an RDP server's TLS, valid at
    the tests' clock."""
    return self_signed_certificate(tmp_path, name, now=T0)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def xrdp(tmp_path: Path, xvnc: Xvnc) -> Iterator[Xrdp]:
    """Debian's xrdp in front of the Xvnc (its ``vnc-any`` session): a real RDP server."""
    assert shutil.which("xrdp"), "install xrdp (./run does)"
    cert, key = _self_signed(tmp_path, "rdp-a")
    _self_signed(tmp_path, "rdp-b")  # another certificate, for a server that changed
    port = _free_port()
    proc = start_xrdp(tmp_path, xvnc, port, "rdp-a")
    try:
        poll_sync(lambda: _listening(port) or proc.poll() is not None, 10, "xrdp to listen")
        assert proc.poll() is None, (tmp_path / f"xrdp-{port}.log").read_text()
        yield Xrdp(port, xvnc, cert, key)
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        if proc.poll() is None:
            proc.kill()
