"""SIGTERM of a replica that holds a gateway's tunnel, in three real ``hoshu serve``.

The gateway is tunnelled to replicas a and b; an engineer's stock ``ssh`` runs a long
recorded command through a.  a gets SIGTERM (``HOSHU_DRAIN_LEAD_S=4``,
``HOSHU_DRAIN_GRACE_S=6``).  What an operator and the engineers see, in this order:
a's ``/readyz`` turns 503 at once while its front door still accepts connections
(the lead); its tunnel claim is still in the database then and goes only after the
drain; the engineer is told and the session ends with ``session.ended`` carrying the
recording's size and SHA-256; a's tunnel closes as soon as it has left, so the
gateway carries on over its tunnel to b; a exits 0; a new session through c
reaches the instrument through b within seconds of a leaving.
"""

from __future__ import annotations

import hashlib
import signal
import socket
import threading
import time
from typing import Any

import httpx
import pytest

from tests.replicas.cluster import Cluster, wait
from tests.replicas.shell import Shell
from tests.replicas.test_cluster import engineer, ssh

pytestmark = [
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.xdist_group("cluster"),
    pytest.mark.timeout(600),
]
__all__ = ["engineer"]  # the signed-in, granted engineer (a fixture of test_cluster)
LEAD_S = 4.0
GRACE_S = 6.0


@pytest.fixture(scope="module")
def cluster(shared_cluster: Cluster) -> Cluster:
    """The package's cluster draining as below, the gateway tunnelled to a and b."""
    drain = {"HOSHU_DRAIN_GRACE_S": str(GRACE_S), "HOSHU_DRAIN_LEAD_S": str(LEAD_S)}
    return shared_cluster.ready(("a", "b"), drain)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Watch(threading.Thread):
    """Notes, every 50 ms, a's /readyz and whether the database still counts a as
    holding the gateway's tunnel (the first moment each changed)."""

    def __init__(self, d: Cluster, gid: str) -> None:
        super().__init__(daemon=True)
        self.d, self.gid = d, gid
        self.api = f"http://127.0.0.1:{d.replicas['a'].api_port}/readyz"
        self.first: dict[str, float] = {}
        self.round: dict[str, int] = {}  # the round of the watch that first saw each
        self.stop_at = threading.Event()

    def _saw(self, what: str, at: float, n: int) -> None:
        self.first.setdefault(what, at)
        self.round.setdefault(what, n)

    def run(self) -> None:
        n = 0
        while not self.stop_at.is_set():
            n += 1
            try:
                code = httpx.get(self.api, timeout=1).status_code
            except httpx.HTTPError:
                code = 0
            now = time.monotonic()  # when the answer came
            if code == 503:
                self._saw("not_ready", now, n)
            if code == 0:
                self._saw("api_gone", now, n)
            # asked after /readyz in each round: a claim dropped before the API stopped
            # is seen gone in the round that first finds the API gone, or earlier
            if "a" not in self.d.holders(self.gid):
                self._saw("claim_gone", time.monotonic(), n)
            if "a" not in self.d.live():
                self._saw("replica_gone", time.monotonic(), n)
            if "claim_gone" in self.first and "gateway_moved" not in self.first:
                if self.d.gateway_status().get("tunnels_up") == 1:  # only b's is left
                    self.first["gateway_moved"] = time.monotonic()
            time.sleep(0.05)


def test_sigterm_fails_readiness_first_drains_then_leaves_and_the_gateway_moves(
    cluster: Cluster, engineer: dict[str, Any]
) -> None:
    d = cluster
    gid = d.gateway_id()
    wait("tunnels to a and b", lambda: sorted(d.holders(gid)) == ["a", "b"])
    a = d.replicas["a"]
    long_session = Shell(
        d, engineer["totp"].code(), "a", command="echo sigterm-marker-$((6*7)); sleep 300"
    )
    recordings = a.data / "recordings"
    watch = Watch(d, gid)
    try:
        cast = wait(
            "the recorded output on a",
            lambda: next(
                (p for p in recordings.glob("*.cast") if b"sigterm-marker-42" in p.read_bytes()),
                None,
            ),
        )
        code = engineer["totp"].code()  # the next session's code, ready before the stop
        watch.start()
        broker = d.procs.pop("broker")
        sigterm_at = time.monotonic()
        broker.send_signal(signal.SIGTERM)
        wait("a's /readyz to fail", lambda: "not_ready" in watch.first, 5)
        # the lead: a still takes connections and still holds the tunnel claim
        assert _listening(a.ssh_port)
        assert "a" in d.holders(gid)
        assert broker.wait(timeout=LEAD_S + GRACE_S + 15) == 0
        stopped = time.monotonic()
        assert long_session.proc.wait(timeout=10) != 0  # ended under the engineer
        wait("the watch to see a's claim gone", lambda: "claim_gone" in watch.first, 5)
        wait("the gateway to see a's tunnel closed", lambda: "gateway_moved" in watch.first, 15)
    finally:
        watch.stop_at.set()
        long_session.close()
    first = watch.first
    not_ready = first["not_ready"] - sigterm_at
    claim_gone = first["claim_gone"] - sigterm_at
    print(
        f"FIGURE SIGTERM to /readyz 503: {not_ready:.2f} s; to a's tunnel claim gone: "
        f"{claim_gone:.2f} s; to exit: {stopped - sigterm_at:.2f} s "
        f"(lead {LEAD_S:g} s, grace {GRACE_S:g} s)"
    )
    assert not_ready < 1.0
    assert claim_gone > not_ready + LEAD_S - 0.5  # left the registry only after the lead
    # the API stopped only after a left the registry (compared by the watch's rounds:
    # the times of one round are apart by as long as a database query takes)
    assert watch.round["claim_gone"] <= watch.round.get("api_gone", 1 << 30), watch.round
    assert stopped - sigterm_at < LEAD_S + GRACE_S + 3

    # another replica reaches the instrument through b at once
    r = ssh(d, code, "echo after-the-stop", replica="c")
    rehomed = time.monotonic() - first["claim_gone"]
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert r.stdout == b"after-the-stop\n"
    print(f"FIGURE a leaving the registry to a new session through c done: {rehomed:.2f} s")
    moved = first["gateway_moved"] - first["claim_gone"]
    print(f"FIGURE a leaving the registry to the gateway seeing its tunnel closed: {moved:.2f} s")
    assert moved < 5  # the tunnels close as soon as a has left, not at the process's end
    assert rehomed < 15
    assert d.holders(gid) == ["b"]
    assert "a" not in d.live()

    seen = long_session.text()
    assert "the broker is restarting" in seen
    assert "session ended: broker shutdown" in seen
    events = [e for e in d.events("a") if e.get("TargetSessionId") == cast.stem]
    [ended] = [e for e in events if e["EventType"] == "session.ended"]
    data = cast.read_bytes()
    assert ended["EventResultDetails"] == "broker_shutdown"
    assert ended["RecordingSize"] == len(data)
    assert ended["RecordingSHA256"] == hashlib.sha256(data).hexdigest()
