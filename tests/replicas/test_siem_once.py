"""Every acknowledged audit event reaches the SIEM exactly once, also when a replica is
killed with SIGKILL while it is shipping.

Three real ``hoshu serve`` replicas keep their hash chains in one PostgreSQL
(``HOSHU_AUDIT_STORE=postgres``) and ship them to a Fluentd forward-protocol receiver
that acknowledges each chunk.  An engineer's stock ``ssh`` types a command every
0.1 s in a shell on replica a, and an engineer's refused terminate requests (each a
403 answered only after its ``admin.refused`` event was committed) run against all
three replicas.  Replica a is killed mid-way.  A survivor finishes a's chain (its
writer lock is free once PostgreSQL sees a's connection gone): it signs the tail and
ships it from a's cursor row.  Then, by ``EventUid``: every event in every chain is
at the SIEM once, every refusal the caller was answered is there once, and
``hoshu audit verify`` passes on every chain.
"""

from __future__ import annotations

import collections
import json
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from broker.tunnel.cluster import DEAD_AFTER_S
from hoshu_demo.demo import _tool
from tests.fixtures.siem import ForwardServer
from tests.replicas.cluster import Cluster, api, token, wait
from tests.replicas.shell import Shell
from tests.support.demoflow import Totp

pytestmark = [
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.xdist_group("cluster"),
    pytest.mark.timeout(900),
]


@pytest.fixture(scope="module")
def siem() -> Iterator[ForwardServer]:
    server = ForwardServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cluster(shared_cluster: Cluster, siem: ForwardServer) -> Cluster:
    """The package's cluster with its audit chains in PostgreSQL, shipped to ``siem``
    (every replica started again so: the chains are this module's alone), the gateway
    tunnelled to b and c."""
    return shared_cluster.ready(("b", "c"), siem_port=siem.port)


class Refusals:
    """The engineer asks each replica to terminate sessions that are not hers to end:
    each answer (403) says its ``admin.refused`` is committed; the ids answered are kept."""

    def __init__(self, d: Cluster, names: tuple[str, ...]) -> None:
        self.d, self.names = d, names
        self.answered: list[str] = []
        self.unanswered = 0
        self.unexpected: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(n,)) for n in names]

    def _run(self, name: str) -> None:
        headers = {"Authorization": f"Bearer {token(self.d, 'tanaka')}"}
        with httpx.Client(base_url=api(self.d, name), headers=headers, timeout=10) as http:
            while not self.stop.is_set():
                sid = str(uuid.uuid4())
                try:
                    r = http.post(f"/v1/sessions/{sid}/terminate")
                except httpx.HTTPError:
                    self.unanswered += 1  # a killed replica: no answer, no promise
                    self.stop.wait(0.2)
                    continue
                if r.status_code != 403:
                    self.unexpected.append(f"{r.status_code} {r.text[:200]}")
                    return
                self.answered.append(sid)
                self.stop.wait(0.02)

    def __enter__(self) -> Refusals:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


def _sign_in(d: Cluster) -> Totp:
    codes = d.sign_in(("tanaka", "sato"))
    d.grant(reason="audit to the SIEM across replicas", ticket="INC-21", plan="type commands")
    return codes["tanaka"]


def test_a_killed_replicas_events_reach_the_siem_exactly_once(
    cluster: Cluster, siem: ForwardServer
) -> None:
    d = cluster
    totp = _sign_in(d)
    shell = Shell(d, totp.code(), "a")
    typing = threading.Event()

    def type_commands() -> None:
        n = 0
        while not typing.is_set() and not shell.ended():
            try:
                shell.type(f"echo tick-{n}")
            except OSError:
                return
            n += 1
            typing.wait(0.1)

    typist = threading.Thread(target=type_commands)
    try:
        rows = wait(
            "the shell's session on a",
            lambda: d._query("SELECT session_id FROM live_sessions WHERE replica_id = 'a'") or None,
        )
        sid = str(rows[0][0])
        typist.start()
        with Refusals(d, ("a", "b", "c")) as load:
            wait(
                "a ships while it works", lambda: len(siem.records) > 50 and len(load.answered) > 30
            )
            answered_at_kill = len(load.answered)
            killed = time.monotonic()
            d.kill("a")
            at_kill = len(siem.records)  # a, dead, sends nothing after this
            [[cursor_at_kill]] = d._query(
                "SELECT seq FROM audit_chain_cursors WHERE chain_id = 'a' AND sink = 'fluentd'"
            )
            [[head_at_kill]] = d._query("SELECT seq FROM audit_chains WHERE chain_id = 'a'")

            def a_finished() -> bool:
                [[cur]] = d._query(
                    "SELECT seq FROM audit_chain_cursors WHERE chain_id = 'a' AND sink = 'fluentd'"
                )
                [[head]] = d._query("SELECT seq FROM audit_chains WHERE chain_id = 'a'")
                return bool(head > head_at_kill and cur == head)  # signed by a survivor, shipped

            wait("a survivor signs and ships a's chain to its end", a_finished, 30)
            finished_s = time.monotonic() - killed
            wait("the engineer's ssh sees a gone", shell.ended, 60)
            wait(
                "more refusals answered by b and c",
                lambda: len(load.answered) > answered_at_kill + 30,
            )
        typing.set()
        typist.join(10)

        def lost_ended_at_siem() -> bool:
            return any(
                r.get("EventType") == "session.ended"
                and r.get("TargetSessionId") == sid
                and r.get("EventResultDetails") == "replica_lost"
                for r in list(siem.records)
            )

        wait(
            "a's orphaned session ended by a survivor, at the SIEM",
            lost_ended_at_siem,
            DEAD_AFTER_S + 30,
        )

        def chains() -> dict[str, list[dict[str, Any]]]:
            return {c: [json.loads(r[0]) for r in d.chain(c)] for c in d.chain_ids()}

        def all_shipped() -> dict[str, list[dict[str, Any]]] | None:
            every = chains()
            at_siem = set(siem.uids())
            missing = [e for es in every.values() for e in es if e["EventUid"] not in at_siem]
            return every if not missing else None

        every = wait("every committed event of every chain at the SIEM", all_shipped, 60)
        shipped_s = time.monotonic() - killed
        a_tail = d._query(
            "SELECT seq FROM audit_chain_cursors WHERE chain_id = 'a' AND sink = 'fluentd'"
        )
        [[a_head]] = d._query("SELECT seq FROM audit_chains WHERE chain_id = 'a'")
        uids = siem.uids()
        every = chains()  # read after the SIEM's list: holds everything the SIEM has
        repeated = {u: n for u, n in collections.Counter(uids).items() if n > 1}
        committed = [e["EventUid"] for es in every.values() for e in es]
        print(
            f"FIGURE SIEM: {len(uids)} records, {len(set(uids))} distinct, "
            f"{len(committed)} committed in {len(every)} chains; a's chain {a_head} events "
            f"(cursor at the kill {cursor_at_kill}, after {a_tail}); everything shipped "
            f"{shipped_s:.1f} s after the kill; {len(load.answered)} refusals answered, "
            f"{load.unanswered} unanswered"
        )
        assert load.unexpected == []
        assert {"a", "b", "c"} <= set(every)  # and the admin commands' chain, if any
        assert len(committed) == len(set(committed))  # a chain repeats no event
        # The one repeat delivery allowed: the batch a had sent, and the SIEM had
        # acknowledged, when it was killed before saving its cursor.  Nobody alive can
        # know that batch arrived, so the survivor sends it again (at least once); it is
        # recognisable by EventUid.  Nothing else may arrive twice.
        where = {e["EventUid"]: (c, i + 1) for c, es in every.items() for i, e in enumerate(es)}
        for u, n in repeated.items():
            chain, seq = where[u]
            assert (chain, n) == ("a", 2), (where[u], n)
            assert cursor_at_kill < seq <= head_at_kill, (seq, cursor_at_kill, head_at_kill)
            assert uids.index(u) < at_kill  # its first copy came from a, before the kill
        print(
            f"FIGURE kill -9 of a to its chain signed and shipped to its end by a survivor: "
            f"{finished_s:.1f} s; a's batch in flight at the kill sent again: "
            f"{len(repeated)} events"
        )
        assert set(uids) <= set(committed)  # nothing that is not in a chain
        distinct = {r["EventUid"]: r for r in list(siem.records)}.values()
        refused = collections.Counter(
            r.get("TargetSessionId") for r in distinct if r.get("EventType") == "admin.refused"
        )
        assert all(refused[s] == 1 for s in load.answered), "an answered refusal is missing"
        # a's tail was signed by the survivor that finished it
        assert "audit.checkpoint" in [e["EventType"] for e in every["a"][head_at_kill:]]
        for_verify = subprocess.run(
            [
                _tool("hoshu"),
                "--json",
                "audit",
                "verify",
                "--store",
                d.database_url,
                "--key",
                str(d.root / "auditor" / "audit_signing_key.pub"),
                "--allow-open-tail",
            ],
            env=d.replica_env(d.replicas["b"]),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert for_verify.returncode == 0, for_verify.stdout + for_verify.stderr
        report = json.loads(for_verify.stdout)
        assert {c["log"] for c in report["chains"]} >= {"postgres:a", "postgres:b", "postgres:c"}
    finally:
        typing.set()
        shell.close()
