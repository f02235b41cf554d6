"""Two tunnels per gateway through ONE load-balanced address (Azure Container Apps).

On Container Apps every broker replica sits behind one TCP ingress address, so the
gateway is configured with that one address and ``min_tunnels = 2``: two slots dial
it, each is told which replica it reached, and a replica that already holds a tunnel
of this gateway refuses the second (``already_connected``), which dials again after a
short jittered delay, until the tunnels sit on distinct replicas.

The balancer is tests/support/balancer.py (round-robin per connection, as Envoy
does), the stand-in for the ingress, which cannot run here.  The first tests use
real tunnel endpoints and the real gateway agent in one process; the last one two
real ``hoshu serve`` replicas on PostgreSQL, the real gateway, a real sshd and
stock ``ssh``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from broker.tunnel.endpoint import TunnelListener, TunnelSettings, start_tunnel_listener
from gateway.agent import GatewayAgent
from hoshu_demo.demo import _tool
from tests.gateway.harness import GATEWAY_ID, Lab, lab
from tests.replicas.cluster import Cluster, wait
from tests.support import poll
from tests.support.balancer import TcpBalancer
from tests.support.demoflow import Totp
from tests.support.stockssh import engineer_ssh

INSTRUMENT = "cobas-c503-1"
TUNNEL: dict[str, float] = {"redial_elsewhere_max_s": 1.0}


def _settings(replica: str, port: int = 0) -> TunnelSettings:
    return TunnelSettings(port=port, heartbeat_s=1, login_timeout_s=5, replica_id=replica)


def _one_address(L: Lab, address: str) -> None:
    L.config_path.write_text(
        L.config_path.read_text().replace(
            'api = "http://127.0.0.1:1"',
            f'api = "http://127.0.0.1:1"\naddresses = ["{address}"]\nmin_tunnels = 2',
        )
    )


async def _as_replica(L: Lab, replica: str) -> None:
    """The lab's listener again, on its port, as replica ``replica``."""
    port = L.listener.port
    await L.listener.close()
    L.listener = await start_tunnel_listener(
        _settings(replica, port), L.broker_key, L.directory, L.emitter
    )


def _slot_replicas(agent: GatewayAgent) -> list[str | None]:
    return [t["replica"] for t in agent.status()["tunnels"] if t["state"] == "connected"]


@pytest.mark.timeout(60)
async def test_a_second_tunnel_on_the_same_replica_is_refused_and_the_first_keeps_working(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One replica behind the address: the gateway's second slot is refused each time,
    with the reason, an audit event and a bounded redial; one registry entry only, the
    first tunnel carries channels, and status says degraded (1 of min_tunnels 2)."""
    caplog.set_level(logging.INFO)
    (tmp_path / "gw").mkdir()
    async with lab(tmp_path / "gw", tunnel=TUNNEL) as L:
        await _as_replica(L, "a")
        _one_address(L, f"127.0.0.1:{L.listener.port}")
        agent = await L.start_agent()
        assert len(agent.slots) == 2  # min_tunnels slots to the one address
        await poll(
            lambda: len(L.emitter.of_type("gateway.refused")) >= 2,
            deadline_s=20,
            what="the second tunnel refused (twice: it dials again)",
        )
        first = L.listener.registry.info(GATEWAY_ID)
        assert first is not None and len(L.listener.registry.tunnels()) == 1
        refused = L.emitter.of_type("gateway.refused")[0]
        assert refused.get("EventResult") == "Failure"
        assert "already connected to replica a" in str(refused.get("EventResultDetails"))
        assert refused.get("GatewayId") == GATEWAY_ID

        # the first tunnel is untouched and carries an instrument connection
        r, w = await first.conn.open_connection(INSTRUMENT, L.echo.port)
        w.write(b"ping")
        assert await r.readexactly(4) == b"ping"
        w.close()
        assert L.listener.registry.info(GATEWAY_ID) is first
        assert L.emitter.of_type("gateway.disconnected") == []

        status = agent.status()
        assert status["tunnels_up"] == 1 and status["replicas"] == ["a"]
        assert status["degraded"] is True
        assert _slot_replicas(agent) == ["a"]
        said = [r.getMessage() for r in caplog.records if "dialling again" in r.getMessage()]
        assert said and "already connected to replica a, dialling again in" in said[0]

        # bounded redial, no busy loop: over 3 s at most a handful of attempts
        before = len(L.emitter.of_type("gateway.refused"))
        started = time.monotonic()
        await poll(lambda: time.monotonic() - started > 3, what="3 s passing")
        extra = len(L.emitter.of_type("gateway.refused")) - before
        print(f"FIGURE refused redials of the second slot in 3 s: {extra}")
        assert 1 <= extra <= 12
        await L.stop_agent(agent)


@pytest.mark.timeout(60)
async def test_two_slots_through_one_balancer_end_on_two_replicas_and_move_back(
    tmp_path: Path,
) -> None:
    """Replicas a and b behind one balanced address: the tunnels end on both; when b
    goes, a still holds one (status degraded); when b is back, both again."""
    (tmp_path / "gw").mkdir()
    async with lab(tmp_path / "gw", tunnel=TUNNEL) as L:
        await _as_replica(L, "a")
        b: TunnelListener = await start_tunnel_listener(
            _settings("b"), L.broker_key, L.directory, L.emitter
        )
        b_port = b.port
        try:
            with TcpBalancer([L.listener.port, b_port]) as lb:
                _one_address(L, lb.address)
                agent = await L.start_agent()
                await poll(
                    lambda: sorted(map(str, _slot_replicas(agent))) == ["a", "b"],
                    deadline_s=20,
                    what="tunnels on replicas a and b",
                )
                assert L.listener.registry.info(GATEWAY_ID) is not None
                assert b.registry.info(GATEWAY_ID) is not None
                assert agent.status()["degraded"] is False

                await b.close()
                await poll(lambda: _slot_replicas(agent) == ["a"], what="b's tunnel seen down")
                assert agent.status()["degraded"] is True
                assert L.listener.registry.info(GATEWAY_ID) is not None

                started = time.monotonic()
                b = await start_tunnel_listener(
                    _settings("b", b_port), L.broker_key, L.directory, L.emitter
                )
                await poll(
                    lambda: sorted(map(str, _slot_replicas(agent))) == ["a", "b"],
                    deadline_s=20,
                    what="tunnels on a and b again",
                )
                print(
                    f"FIGURE back on two replicas after b restarted: "
                    f"{time.monotonic() - started:.2f} s"
                )
                await L.stop_agent(agent)
        finally:
            await b.close()


@pytest.mark.timeout(60)
async def test_window_only_with_one_address_checks_then_tunnels_only_inside_a_window(
    tmp_path: Path,
) -> None:
    """Window-only mode with two slots to one address: outside a window only the check
    connects (no tunnel, no refusal); once a window opens a tunnel comes up, the second
    slot is refused on the same replica, and when the window ends the tunnel closes."""
    (tmp_path / "gw").mkdir()
    async with lab(tmp_path / "gw", mode="window-only", tunnel=TUNNEL) as L:
        await _as_replica(L, "a")
        _one_address(L, f"127.0.0.1:{L.listener.port}")
        agent = await L.start_agent()
        await poll(
            lambda: GATEWAY_ID in L.directory.inventory, deadline_s=15, what="a window check"
        )
        assert L.listener.registry.info(GATEWAY_ID) is None
        assert L.emitter.of_type("gateway.refused") == []
        now = datetime.now(UTC)
        L.directory.windows = [(now - timedelta(minutes=1), now + timedelta(seconds=6))]
        await poll(lambda: _slot_replicas(agent) == ["a"], deadline_s=15, what="a tunnel")
        await poll(
            lambda: bool(L.emitter.of_type("gateway.refused")), what="the second slot refused"
        )
        assert len(L.listener.registry.tunnels()) == 1
        L.directory.windows = []
        await poll(
            lambda: L.listener.registry.info(GATEWAY_ID) is None,
            deadline_s=15,
            what="the tunnel closed when the window ended",
        )
        await L.stop_agent(agent)


async def test_a_protocol_1_gateway_is_answered_in_protocol_1_without_placement(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gateway that says protocol 1 gets a protocol 1 welcome and no placement
    message (which it would not know); its tunnel works, status names no replica."""
    import gateway.link

    monkeypatch.setattr(gateway.link, "PROTOCOL_VERSION", 1)
    (tmp_path / "gw").mkdir()
    async with lab(tmp_path / "gw", tunnel=TUNNEL) as L:
        await _as_replica(L, "a")
        agent = await L.start_agent()
        await L.listener.registry.wait_for(GATEWAY_ID, 10)
        await poll(lambda: agent.tunnels_up == 1, what="the tunnel up")
        info = L.listener.registry.info(GATEWAY_ID)
        assert info is not None and info.conversation.hello is not None
        assert info.conversation.hello.protocol == 1
        link = agent.slots[0].link
        assert link is not None
        await poll(link.windows_received.is_set, what="the windows after the welcome")
        assert link.replica is None and link.bad_messages == 0
        await L.stop_agent(agent)


# --- real replicas ------------------------------------------------------------------


@pytest.fixture(scope="module")
def balanced(
    tmp_path_factory: pytest.TempPathFactory, postgres_module_url: str
) -> Iterator[tuple[Cluster, TcpBalancer]]:
    c = Cluster(
        tmp_path_factory.mktemp("bal") / ".c",
        api_port=0,
        ssh_port=0,
        tunnel_port=0,
        database_url=postgres_module_url,
    )
    try:
        c.start_cluster(("b",))
        a, b = c.replicas["a"], c.replicas["b"]
        with TcpBalancer([a.tunnel_port, b.tunnel_port]) as lb:
            yield c, lb
    finally:
        c.stop()


def _gateway_through(c: Cluster, address: str) -> None:
    """Restart the gateway with one address (the balancer) and min_tunnels = 2."""
    proc = c.procs.pop("gateway")
    proc.terminate()
    proc.wait(timeout=20)
    lines = [
        ln
        for ln in c.gateway_config.read_text().splitlines()
        if not ln.startswith(("addresses =", "min_tunnels =", "redial_elsewhere_max_s ="))
    ]
    at = lines.index("[broker]") + 1
    lines[at:at] = [f'addresses = ["{address}"]', "min_tunnels = 2"]
    if "[tunnel]" in lines:
        lines.insert(lines.index("[tunnel]") + 1, "redial_elsewhere_max_s = 2")
    else:
        lines += ["[tunnel]", "redial_elsewhere_max_s = 2"]
    c.gateway_config.write_text("\n".join(lines) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOSHU_")}
    c._spawn("gateway", [_tool("hoshu-gateway"), "--config", str(c.gateway_config), "run"], env)


def _held(c: Cluster) -> list[str]:
    st = c.gateway_status()
    return sorted(t["replica"] for t in st.get("tunnels", []) if t["state"] == "connected")


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.xdist_group("demo")
@pytest.mark.timeout(300)
def test_through_one_balanced_address_the_gateway_holds_two_replicas_and_survives_a_kill(
    balanced: tuple[Cluster, TcpBalancer],
) -> None:
    c, lb = balanced
    started = time.monotonic()
    _gateway_through(c, lb.address)
    gid = c.gateway_id()
    wait("tunnels on replicas a and b", lambda: _held(c) == ["a", "b"])
    wait("both claims in the database", lambda: sorted(c.holders(gid)) == ["a", "b"])
    print(f"FIGURE two distinct replicas through one address: {time.monotonic() - started:.2f} s")
    st = c.gateway_status()
    assert st["degraded"] is False and sorted(st["replicas"]) == ["a", "b"]
    assert len(lb.picks) >= 2

    # tanaka signs in on a and is granted the instrument (approved by sato)
    people = c.describe()["users"]
    codes = {u: Totp(c.secrets[u], time.time()) for u in ("tanaka", "sato")}
    for user in ("tanaka", "sato"):
        c.hoshu(
            user,
            "login",
            "--user",
            user,
            "--password-stdin",
            "--totp",
            codes[user].code(),
            stdin=people[user]["password"],
        )
    port = c.describe()["instruments"][INSTRUMENT]["ssh_port"]
    req = c.hoshu(
        "tanaka",
        "request",
        INSTRUMENT,
        "--port",
        str(port),
        "--duration",
        "1h",
        "--reason",
        "balanced tunnels",
        "--ticket",
        "INC-14",
        "--plan",
        "run commands",
    )
    c.hoshu("sato", "approve", req["id"], "--comment", "ok")
    code = codes["tanaka"].code()

    # kill -9 replica b, which holds one of the two tunnels
    c.kill("b")
    killed = time.monotonic()
    argv, env = engineer_ssh(
        c.root,
        c.env("tanaka"),
        code,
        c.replicas["a"].ssh_port,
        f"tanaka+{INSTRUMENT}",
        "echo survivor-$((40+2))",
    )
    r = subprocess.run(
        argv, env=env, capture_output=True, stdin=subprocess.DEVNULL, timeout=120, check=False
    )
    session_s = time.monotonic() - killed
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert r.stdout == b"survivor-42\n"
    print(f"FIGURE engineer session through the survivor, from the kill to exit: {session_s:.2f} s")
    wait("b's tunnel seen down", lambda: _held(c) == ["a"])
    assert c.gateway_status()["degraded"] is True

    # b comes back: the gateway has two distinct replicas again
    restarted = time.monotonic()
    c.start_replica("b")
    wait("tunnels on a and b again", lambda: _held(c) == ["a", "b"])
    print(f"FIGURE back on two replicas after b restarted: {time.monotonic() - restarted:.2f} s")
    wait("one claim per replica", lambda: sorted(c.holders(gid)) == ["a", "b"])


def test_status_names_each_tunnels_replica_and_the_redial_limit_is_checked(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from gateway.cli import _print_status
    from gateway.config import parse_config
    from gateway.errors import ConfigError

    _print_status(
        {
            "state": "connected",
            "tunnels_up": 1,
            "min_tunnels": 2,
            "replicas": ["a"],
            "degraded": True,
            "tunnels": [
                {"broker": "lb:2223", "state": "connected", "replica": "a", "last_error": None},
                {
                    "broker": "lb:2223",
                    "state": "backing_off",
                    "replica": None,
                    "last_error": "already connected to replica a",
                },
            ],
        }
    )
    out = capsys.readouterr().out
    assert "tunnels:    1 of 2 up on 1 replica(s) (min_tunnels 2)  DEGRADED" in out
    assert "  lb:2223: connected on replica a\n" in out
    assert "  lb:2223: backing_off (already connected to replica a)" in out

    base = '[gateway]\nname = "gw"\nstate_dir = "/tmp/x"\n[broker]\naddresses = ["lb:2223"]\n'
    cfg = parse_config(base + "min_tunnels = 2\n")
    assert cfg.min_tunnels == 2 and cfg.tunnel.redial_elsewhere_max_s == 30
    with pytest.raises(ConfigError, match="redial_elsewhere_max_s"):
        parse_config(base + "[tunnel]\nredial_elsewhere_max_s = 600\n")
