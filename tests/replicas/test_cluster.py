"""Three real ``hoshu serve`` replicas on one PostgreSQL, one real gateway, a real sshd.

The gateway is tunnelled to replicas b and c only; the engineer's stock ``ssh`` signs
in on replica a, which does MFA, the grant check and the recording itself and
reaches the instrument through the replica holding a tunnel.  A broken pin refuses
the link (fail closed, audited); killing one tunnel holder with SIGKILL leaves the
hospital reachable through the other.
"""

from __future__ import annotations

import subprocess
import time
from typing import Any

import asyncssh
import pytest

from tests.replicas.cluster import INSTRUMENT, Cluster, wait
from tests.support.demoflow import Totp
from tests.support.stockssh import engineer_ssh

pytestmark = [
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.xdist_group("cluster"),
    pytest.mark.timeout(600),
]


@pytest.fixture(scope="module")
def cluster(shared_cluster: Cluster) -> Cluster:
    """The package's cluster, with the gateway tunnelled to b and c only."""
    return shared_cluster.ready(("b", "c"))


@pytest.fixture(scope="module")
def engineer(cluster: Cluster) -> dict[str, Any]:
    """tanaka signed in and granted the instrument (approved by sato), on replica a."""
    d = cluster
    codes = d.sign_in(("tanaka", "sato"))
    d.grant(reason="replica test", ticket="INC-7", plan="run commands")
    return {"totp": codes["tanaka"]}


def ssh(
    d: Cluster, totp: Totp | str, command: str, *, replica: str = "a"
) -> subprocess.CompletedProcess[bytes]:
    """Stock OpenSSH through replica ``replica``'s front door (TOTP by askpass; a code
    taken beforehand, or the next one of ``totp``)."""
    argv, env = engineer_ssh(
        d.root,
        d.env("tanaka"),
        totp if isinstance(totp, str) else totp.code(),
        d.replicas[replica].ssh_port,
        f"tanaka+{INSTRUMENT}",
        command,
    )
    return subprocess.run(
        argv,
        env=env,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )


def _of(events: list[dict[str, Any]], type_: str) -> list[dict[str, Any]]:
    return [e for e in events if e.get("EventType") == type_]


def test_an_engineer_on_a_replica_without_a_tunnel_reaches_the_instrument(
    cluster: Cluster, engineer: dict[str, Any]
) -> None:
    """Replica a holds no tunnel (the gateway dials b and c only), yet the session works;
    a records it, and the gateway's own audit copy names the engineer."""
    d = cluster
    assert "a" not in d.holders(d.gateway_id())
    since = time.time()  # this test's events (the cluster ran other tests before)
    code = engineer["totp"].code()
    started = time.monotonic()
    r = ssh(d, code, "echo through-$((40+2))")
    elapsed = time.monotonic() - started
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert r.stdout == b"through-42\n"
    print(f"FIGURE ssh session through a peer replica (sign-in to exit): {elapsed:.2f} s")
    a_events = d.events("a", since)
    [ended] = wait(
        "session.ended on replica a", lambda: _of(d.events("a", since), "session.ended") or None
    )
    assert ended["ActorUsername"] == "tanaka" and ended["RecordingSize"] > 0
    assert _of(a_events, "replica.peer_refused") == []
    recordings = list((d.replicas["a"].data / "recordings").glob("*.cast"))
    assert any(b"through-42" in p.read_bytes() for p in recordings)  # recorded on a

    # for comparison: the same through b, which holds a tunnel itself
    code = engineer["totp"].code()
    started = time.monotonic()
    direct = ssh(d, code, "echo direct", replica="b")
    direct_s = time.monotonic() - started
    assert direct.returncode == 0, direct.stderr.decode(errors="replace")
    print(f"FIGURE ssh session on the tunnel holder itself: {direct_s:.2f} s")

    def opened() -> list[dict[str, Any]]:
        return [e for n in ("b", "c") for e in _of(d.events(n, since), "gateway.channel_opened")]

    channels = wait(
        "the gateway's channel_opened of both sessions, forwarded to b or c",
        lambda: opened() if len(opened()) >= 2 else None,
    )
    assert len(channels) == 2 and {c["ActorUsername"] for c in channels} == {"tanaka"}


def test_a_holder_whose_key_is_not_its_pin_is_refused(
    cluster: Cluster, engineer: dict[str, Any]
) -> None:
    """b's and c's pins in the replica table no longer match their keys: a refuses to
    forward (fail closed), writes replica.peer_refused and tells the engineer."""
    d = cluster
    good = {n: d.pin(n) for n in ("b", "c")}
    for n in good:
        d.set_pin(
            n, asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
        )
    try:
        r = ssh(d, engineer["totp"], "echo should-not-run")
        assert r.returncode != 0
        assert b"should-not-run" not in r.stdout
        assert b"refusing to forward" in r.stderr, r.stderr
        refused = wait(
            "replica.peer_refused at a", lambda: _of(d.events("a"), "replica.peer_refused") or None
        )
        assert {e["Details"]["replica"] for e in refused} <= {"b", "c"}
    finally:
        for n, key in good.items():
            d.set_pin(n, key)


def test_killing_one_tunnel_holder_leaves_the_hospital_reachable(
    cluster: Cluster, engineer: dict[str, Any]
) -> None:
    """SIGKILL of b while the gateway holds tunnels to b and c: a new session through
    a works at once (through c), and the gateway keeps redialling b."""
    d = cluster
    gid = d.gateway_id()
    wait("tunnels to b and c", lambda: sorted(d.holders(gid)) == ["b", "c"])
    code = engineer["totp"].code()  # the engineer's authenticator, ready before the kill
    killed = time.monotonic()
    d.kill("b")
    r = ssh(d, code, "echo after-the-kill")
    first_session_s = time.monotonic() - killed
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert r.stdout == b"after-the-kill\n"
    print(
        f"FIGURE kill -9 of b to the end of a new session through a (sign-in, MFA, "
        f"command): {first_session_s:.2f} s"
    )
    status = wait(
        "the gateway sees b gone",
        lambda: s if (s := d.gateway_status()).get("tunnels_up") == 1 else None,
        30,
    )
    assert status["degraded"] is True
    print(f"FIGURE the gateway saw b's tunnel down after: {time.monotonic() - killed:.2f} s")
    wait("b's claim counted as gone", lambda: "b" not in d.holders(gid) or None, 30)
    print(f"FIGURE b's rows counted as gone after: {time.monotonic() - killed:.2f} s")
    # b comes back: the gateway's tunnel to it returns within seconds
    back = time.monotonic()
    d.start_replica("b")
    wait("the gateway's tunnel to b again", lambda: "b" in d.holders(gid), 60)
    print(
        f"FIGURE gateway tunnel back to a restarted replica: "
        f"{time.monotonic() - back:.2f} s (including the broker's start)"
    )
