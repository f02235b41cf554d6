"""No forward to an instrument's interactive port: sshd, RDP and VNC go through the
recorder or not at all, whatever the grant's ports say."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta

import paramiko
import pytest

from broker.access.door import InstrumentTarget
from broker.frontdoor.raw_paths import interactive_port
from tests.frontdoor.harness import World, paramiko_client, stop_process
from tests.support import connect_when_listening, free_port, poll


def _grant_ssh_and(w: World, port: int) -> None:
    """A grant as the control plane makes it by default (the SSH port), plus ``port``."""
    t = w.policy.instruments[w.instrument]
    w.policy.instruments[w.instrument] = replace(t, ports=(*t.ports, port))
    w.policy.grant(
        w.engineer, w.instrument, (w.ssh_port, port), ends=w.clock.now + timedelta(hours=1)
    )


async def test_ssh_L_to_the_instruments_sshd_is_refused_and_a_vendor_port_still_works(
    world: World, echo_port: int
) -> None:
    """Real OpenSSH ``ssh -N -L``: the forward to sshd gets nothing from the instrument
    (no SSH banner), the engineer is told how to connect, ``forward.refused`` is
    written; the vendor port forwarded by the same client carries data."""
    w = world
    _grant_ssh_and(w, echo_port)
    to_sshd, to_echo = free_port(), free_port()
    argv = w.ssh_argv(
        batch=True,
        extra=(
            "-o",
            f"CertificateFile={w.cert_file()}",
            "-o",
            "ExitOnForwardFailure=yes",
            "-N",
            "-L",
            f"127.0.0.1:{to_sshd}:localhost:{w.ssh_port}",
            "-L",
            f"127.0.0.1:{to_echo}:{w.instrument}:{echo_port}",
            w.login(),
        ),
    )
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env=w.env(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        reader, writer = await connect_when_listening(to_sshd)
        got = await asyncio.wait_for(reader.read(100), 10)
        assert got == b""  # closed: no "SSH-2.0-OpenSSH" from the instrument
        writer.close()
        await poll(lambda: bool(w.events.of_type("forward.refused")), deadline_s=10)
        reader, writer = await connect_when_listening(to_echo)
        writer.write(b"vendor-port")
        assert await asyncio.wait_for(reader.readexactly(11), 10) == b"vendor-port"
        writer.close()
        await poll(lambda: bool(w.events.of_type("forward.closed")), deadline_s=10)
    finally:
        await stop_process(proc)
    assert proc.stderr is not None
    err = (await proc.stderr.read()).decode(errors="replace")
    assert "administratively prohibited" in err
    assert f"ssh alice+{w.instrument}@" in err
    (refused,) = w.events.of_type("forward.refused")
    assert refused.get("EventResultDetails") == "interactive_port"
    assert refused.get("TargetPortNumber") == w.ssh_port
    assert "not recorded" in refused.get("EventMessage")
    (opened,) = w.events.of_type("forward.opened")
    assert opened.get("TargetPortNumber") == echo_port


async def test_paramiko_direct_tcpip_to_sshd_is_refused(world: World, echo_port: int) -> None:
    """The same with paramiko's ``open_channel("direct-tcpip")``, by name and as localhost."""
    w = world
    _grant_ssh_and(w, echo_port)
    t = await asyncio.to_thread(paramiko_client, w)
    try:
        for host in (w.instrument, "localhost"):
            with pytest.raises(paramiko.ChannelException) as exc:
                await asyncio.to_thread(
                    t.open_channel, "direct-tcpip", (host, w.ssh_port), ("127.0.0.1", 5555), 10
                )
            assert exc.value.code == paramiko.common.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
        chan = await asyncio.to_thread(
            t.open_channel, "direct-tcpip", (w.instrument, echo_port), ("127.0.0.1", 5555), 10
        )
        chan.settimeout(10)
        chan.sendall(b"ok?")
        assert await asyncio.to_thread(chan.recv, 3) == b"ok?"
        chan.close()
    finally:
        t.close()
    refused = w.events.of_type("forward.refused")
    assert [e.get("EventResultDetails") for e in refused] == ["interactive_port"] * 2
    assert len(w.events.of_type("forward.opened")) == 1


async def test_a_desktop_port_the_inventory_marks_is_refused(world: World, echo_port: int) -> None:
    """An instrument the inventory lists as VNC, on a non-standard port: its desktop
    port is refused (desktop access comes through the console, recorded)."""
    w = world
    t = w.policy.instruments[w.instrument]
    w.policy.instruments[w.instrument] = replace(t, protocol="vnc", ports=(echo_port,))
    w.policy.grant(w.engineer, w.instrument, (echo_port,), ends=w.clock.now + timedelta(hours=1))
    client = await asyncio.to_thread(paramiko_client, w)
    try:
        with pytest.raises(paramiko.ChannelException):
            await asyncio.to_thread(
                client.open_channel,
                "direct-tcpip",
                (w.instrument, echo_port),
                ("127.0.0.1", 5555),
                10,
            )
    finally:
        client.close()
    (refused,) = w.events.of_type("forward.refused")
    assert "VNC desktop port" in refused.get("EventMessage")
    assert "console" in refused.get("EventMessage")
    assert not w.events.of_type("forward.opened")


def _target(**kw: object) -> InstrumentTarget:
    base: dict[str, object] = dict(
        name="cobas-c503-1",
        hospital_id="h",
        gateway_id="g",
        host="10.0.0.5",
        ssh_port=2201,
        ports=(2201, 8080),
        username="svc",
        credential="x",
    )
    base.update(kw)
    return InstrumentTarget(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("target", "port", "kind"),
    [
        (_target(), 2201, "ssh"),  # the instrument's SSH port
        (_target(), 22, "ssh"),
        (_target(), 3389, "rdp"),
        (_target(), 5901, "vnc"),
        (_target(), 8080, None),  # a vendor port
        # a desktop instrument on a non-standard port: every listed port (fail closed)
        (_target(protocol="rdp", ports=(8080, 13389)), 13389, "rdp"),
        (_target(protocol="rdp", ports=(8080, 13389)), 8080, "rdp"),
        (_target(protocol="rdp", ports=(3389, 8080)), 8080, None),
        (_target(protocol="sftp", ports=(2022, 8080)), 2022, "ssh"),
        (_target(protocol="http", ports=(8443,)), 8443, None),
    ],
)
def test_interactive_ports(target: InstrumentTarget, port: int, kind: str | None) -> None:
    assert interactive_port(target, port) == kind


async def test_an_sshd_on_a_port_the_inventory_does_not_mark_is_cut_off(world: World) -> None:
    """The hospital lists the real sshd's port as a plain vendor port: the forward opens,
    but the engineer never gets the SSH banner; the forward ends as ``interactive_port``."""
    w = world
    sshd = w.ssh_port
    t = w.policy.instruments[w.instrument]
    w.policy.instruments[w.instrument] = replace(
        t, ssh_port=free_port(), ports=(sshd,), protocol="tcp"
    )
    w.policy.grant(w.engineer, w.instrument, (sshd,), ends=w.clock.now + timedelta(hours=1))
    client = await asyncio.to_thread(paramiko_client, w)
    try:
        chan = await asyncio.to_thread(
            client.open_channel, "direct-tcpip", (w.instrument, sshd), ("127.0.0.1", 5555), 10
        )
        chan.settimeout(10)
        assert await asyncio.to_thread(chan.recv, 100) == b""
    finally:
        client.close()
    await poll(lambda: bool(w.events.of_type("forward.closed")))
    (closed,) = w.events.of_type("forward.closed")
    assert closed.get("EventResultDetails") == "interactive_port"
    assert closed.get("DstBytes") == 0
