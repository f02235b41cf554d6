"""Three real ``hoshu serve`` replicas on one real PostgreSQL, the demo's gateway and lab.

Replica ``a`` is the demo's broker (bootstrap, people, hospital, gateway enrolment and
instruments are done through it, as in :class:`hoshu_demo.demo.Demo`).  Replicas
``b`` and ``c`` get a data directory of their own and a copy of the shared keys (the
tunnel host key the gateway pinned, the user CA, the front-door host key, the sealing
and audit keys: what the key store shares between replicas); each replica's peer key
is its own.  :meth:`Cluster.tunnel_to` restarts the gateway with ``[broker] addresses``
naming the chosen replicas only.

With ``siem_port`` set (an option: the other tests keep the per-replica file logs and
their speed) every replica keeps its audit chain in the shared PostgreSQL
(``HOSHU_AUDIT_STORE=postgres``, one chain per replica id) and ships it to a Fluentd
forward-protocol receiver on that port (tests/fixtures/siem.py); a survivor finishes
a killed replica's chain within ``HOSHU_AUDIT_ORPHAN_EVERY_S`` (2 s here).

One cluster serves most replica test modules (``shared_cluster`` in
tests/replicas/conftest.py): each module asks :meth:`Cluster.ready` for the tunnel
layout and broker settings it needs; a replica a test killed or stopped is started
again there, and a change of settings restarts every replica with them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pyotp
import sqlalchemy as sa

from hoshu_demo.demo import Demo, _tool, free_port
from tests.support import poll_sync
from tests.support.demoflow import Totp, request_approved

WAIT_S = 60.0  # three brokers, a gateway, sshd and PostgreSQL on two cores
INSTRUMENT = "cobas-c503-1"
OTHER_HOSPITAL = "tsuki-hospital"
OTHER_PASSWORD = "Moon-Approver-Other-2026"


@dataclass
class Replica:
    name: str
    data: Path
    api_port: int
    ssh_port: int
    tunnel_port: int
    peer_port: int


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Cluster(Demo):
    database_url: str = ""
    replicas: dict[str, Replica] = field(default_factory=dict)
    siem_port: int = 0  # > 0: durable PostgreSQL audit chains, shipped to Fluentd here
    tunnels: tuple[str, ...] = ()  # the replicas the gateway dials (after tunnel_to)
    # the authenticators of the people signed in (one per user: the broker refuses a
    # code used before, whichever test module used it)
    totps: dict[str, Totp] = field(default_factory=dict)
    passwords: dict[str, str] = field(default_factory=dict)
    _settings: dict[str, str] = field(default_factory=dict)  # what ready() added
    _base_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.broker_env.update(self.siem_env(self.siem_port))
        self._base_env = dict(self.broker_env)

    @staticmethod
    def siem_env(port: int) -> dict[str, str]:
        if not port:
            return {}
        sink = {"kind": "fluentd", "host": "127.0.0.1", "port": port, "mask": False}
        return {
            "HOSHU_AUDIT_STORE": "postgres",
            "HOSHU_AUDIT_SINKS": json.dumps([sink]),
            "HOSHU_AUDIT_ORPHAN_EVERY_S": "2",
        }

    def env(self, user: str | None = None) -> dict[str, str]:
        env = super().env(user)
        a = self.replicas.get("a")
        env.update(
            {
                "HOSHU_DATABASE_URL": self.database_url,
                "HOSHU_REPLICA_ID": "a",
                "HOSHU_PEER_PORT": str(a.peer_port if a else 0),
            }
        )
        return env

    def replica_env(self, r: Replica) -> dict[str, str]:
        env = self.env()
        env.update(
            {
                "HOSHU_DATA_DIR": str(r.data),
                "HOSHU_API_PORT": str(r.api_port),
                "HOSHU_SSH_PORT": str(r.ssh_port),
                "HOSHU_TUNNEL_PORT": str(r.tunnel_port),
                "HOSHU_REPLICA_ID": r.name,
                "HOSHU_PEER_PORT": str(r.peer_port),
            }
        )
        return env

    def start_cluster(self, names: tuple[str, ...] = ("b", "c")) -> None:
        self.replicas["a"] = Replica("a", self.root / "broker", 0, 0, 0, free_port(0))
        self.start()  # replica a and the whole demo set-up
        a = self.replicas["a"]
        a.api_port, a.ssh_port, a.tunnel_port = self.api_port, self.ssh_port, self.tunnel_port
        for name in names:
            r = Replica(
                name,
                self.root / f"broker-{name}",
                free_port(0),
                free_port(0),
                free_port(0),
                free_port(0),
            )
            shutil.copytree(
                self.root / "broker" / "keys",
                r.data / "keys",
                ignore=shutil.ignore_patterns("peer_key_*"),
            )
            self.replicas[name] = r
            self.start_replica(name)
        for name in names:
            r = self.replicas[name]
            self._wait_for(
                f"replica {name}",
                lambda r=r: all(
                    _listening(p) for p in (r.api_port, r.ssh_port, r.tunnel_port, r.peer_port)
                ),
                WAIT_S,
            )
        self._wait_for(
            "every replica registered", lambda: set(self.live()) >= {"a", *names}, WAIT_S
        )

    @staticmethod
    def _proc(name: str) -> str:
        return "broker" if name == "a" else f"broker-{name}"

    def start_replica(self, name: str) -> None:
        env = self.env() if name == "a" else self.replica_env(self.replicas[name])
        self._spawn(self._proc(name), [_tool("hoshu"), "serve"], env, append=True)

    def kill(self, name: str) -> None:
        """SIGKILL replica ``name`` (no drain, no deregistration)."""
        proc = self.procs.pop(self._proc(name))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def running(self, name: str) -> bool:
        proc = self.procs.get(self._proc(name))
        return proc is not None and proc.poll() is None

    def restart(self, names: Iterable[str]) -> None:
        """Start replicas ``names`` again (those still running get SIGTERM first);
        returns once each listens on its ports and has registered anew."""
        names = tuple(names)
        before = dict(self._query("SELECT replica_id, started_at FROM broker_replicas"))
        stopping = [self.procs.pop(self._proc(n)) for n in names if self.running(n)]
        for p in stopping:
            p.terminate()
        for p in stopping:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        for n in names:
            self.start_replica(n)
        for n in names:
            r = self.replicas[n]
            self._wait_for(
                f"replica {n} again",
                lambda r=r: all(
                    _listening(p) for p in (r.api_port, r.ssh_port, r.tunnel_port, r.peer_port)
                ),
                WAIT_S,
            )

        def registered() -> bool:
            now = dict(self._query("SELECT replica_id, started_at FROM broker_replicas"))
            return all(now.get(n) not in (None, before.get(n)) for n in names) and set(
                self.live()
            ) >= set(names)

        self._wait_for("the restarted replicas registered", registered, WAIT_S)

    def ready(
        self,
        tunnels: tuple[str, ...],
        settings: Mapping[str, str] | None = None,
        *,
        siem_port: int = 0,
    ) -> Cluster:
        """The cluster as a test module needs it: every replica running with the broker
        ``settings`` (and, with ``siem_port``, the durable audit chains shipped there),
        the gateway tunnelled to ``tunnels`` only.  A replica that is not running is
        started; other settings than the running ones restart every replica."""
        wanted = {**self.siem_env(siem_port), **(settings or {})}
        stale = [n for n in self.replicas if not self.running(n)]
        if wanted != self._settings:
            self._settings = wanted
            self.broker_env = {**self._base_env, **wanted}
            self.siem_port = siem_port
            stale = list(self.replicas)
        if stale:
            self.restart(stale)
        gateway = self.procs.get("gateway")
        if (
            stale
            or gateway is None
            or gateway.poll() is not None
            or sorted(tunnels) != sorted(self.tunnels)
            or sorted(self.holders(self.gateway_id())) != sorted(tunnels)
        ):
            self.tunnel_to(*tunnels)
        return self

    # --- people ------------------------------------------------------------------

    def add_other_approver(self) -> None:
        """tsuki, an approver of another hospital (created once, TOTP enrolled)."""
        if "tsuki" in self.passwords:
            return
        self.hoshu("admin", "admin", "orgs", "create", OTHER_HOSPITAL, "--kind", "hospital")
        self.hoshu(
            "admin",
            "admin",
            "users",
            "create",
            "tsuki",
            "--full-name",
            "Tsuki Ren",
            "--org",
            OTHER_HOSPITAL,
            "--role",
            "approver",
            "--password-stdin",
            stdin=OTHER_PASSWORD,
        )
        self.hoshu("tsuki", "login", "--user", "tsuki", "--password-stdin", stdin=OTHER_PASSWORD)
        uri = self.hoshu("tsuki", "totp", "enroll")["otpauth_uri"]
        self.secrets["tsuki"] = pyotp.parse_uri(uri).secret
        self.hoshu("tsuki", "totp", "confirm", self.code("tsuki"))
        self.passwords["tsuki"] = OTHER_PASSWORD

    def sign_in(self, users: Iterable[str]) -> dict[str, Totp]:
        """Each of ``users`` signs in with ``hoshu login`` (password on stdin and the
        next code of their one authenticator); returns the authenticators."""
        for u, p in self.describe()["users"].items():
            self.passwords.setdefault(u, p["password"])
        codes = {}
        for user in users:
            totp = self.totps.setdefault(user, Totp(self.secrets[user], time.time()))
            # the next step's code, as a first sign-in gets (not the oldest one still
            # accepted, which a slow CLI start on a busy machine can outlive)
            totp.last = max(totp.last, int(time.time()) // 30)
            self.hoshu(
                user,
                "login",
                "--user",
                user,
                "--password-stdin",
                "--totp",
                totp.code(),
                stdin=self.passwords[user],
            )
            codes[user] = totp
        return codes

    def grant(self, *, reason: str, ticket: str, plan: str) -> dict[str, Any]:
        """tanaka's one grant of the instrument, approved by sato (both signed in):
        grants still open from an earlier module are revoked first."""
        for (gid,) in self._query(
            "SELECT id FROM grants WHERE status IN ('approved', 'active') ORDER BY created_at"
        ):
            self.hoshu("sato", "revoke", str(gid), "--comment", "a new test module")
        return request_approved(self, INSTRUMENT, reason=reason, ticket=ticket, plan=plan)

    # --- the gateway ---------------------------------------------------------------

    @property
    def gateway_config(self) -> Path:
        return self.root / "gateway" / "gateway.toml"

    def gateway_id(self) -> str:
        enrolled = json.loads((self.root / "gateway" / "state" / "enrollment.json").read_text())
        return str(enrolled["gateway_id"])

    def gateway_status(self) -> dict[str, Any]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HOSHU_")}
        st = subprocess.run(
            [_tool("hoshu-gateway"), "--config", str(self.gateway_config), "status", "--json"],
            capture_output=True,
            env=env,
            timeout=30,
            check=False,
        )
        try:
            return dict(json.loads(st.stdout)) if st.returncode == 0 else {}
        except ValueError:
            return {}

    def tunnel_to(self, *names: str) -> None:
        """Restart the gateway with tunnels to replicas ``names`` only."""
        proc = self.procs.pop("gateway")
        proc.terminate()
        proc.wait(timeout=20)
        text = self.gateway_config.read_text()
        lines = [
            ln for ln in text.splitlines() if not ln.startswith(("addresses =", "min_tunnels ="))
        ]
        at = lines.index("[broker]") + 1
        addresses = ", ".join(f'"127.0.0.1:{self.replicas[n].tunnel_port}"' for n in names)
        lines[at:at] = [f"addresses = [{addresses}]", f"min_tunnels = {len(names)}"]
        self.gateway_config.write_text("\n".join(lines) + "\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("HOSHU_")}
        self._spawn(
            "gateway", [_tool("hoshu-gateway"), "--config", str(self.gateway_config), "run"], env
        )
        self._wait_for(
            f"tunnels to {names}",
            lambda: self.gateway_status().get("tunnels_up") == len(names),
            WAIT_S,
        )
        gid = self.gateway_id()
        self._wait_for(
            "the claims in the database", lambda: sorted(self.holders(gid)) == sorted(names), WAIT_S
        )
        self.tunnels = tuple(names)

    # --- the database, as an operator would look -----------------------------------

    def _query(self, sql: str, **params: Any) -> list[Any]:
        engine = sa.create_engine(self.database_url)
        try:
            with engine.begin() as conn:
                result = conn.execute(sa.text(sql), params)
                return list(result.all()) if result.returns_rows else []
        finally:
            engine.dispose()

    def live(self) -> list[str]:
        return [
            r[0]
            for r in self._query(
                "SELECT replica_id FROM broker_replicas WHERE last_seen > now() - interval '15 s'"
            )
        ]

    def holders(self, gateway_id: str) -> list[str]:
        return [
            r[0]
            for r in self._query(
                "SELECT replica_id FROM gateway_tunnels WHERE gateway_id = :g "
                "AND last_seen > now() - interval '15 s'",
                g=gateway_id,
            )
        ]

    def set_pin(self, name: str, key: str) -> None:
        self._query("UPDATE broker_replicas SET peer_key = :k WHERE replica_id = :r", k=key, r=name)

    def pin(self, name: str) -> str:
        return str(
            self._query("SELECT peer_key FROM broker_replicas WHERE replica_id = :r", r=name)[0][0]
        )

    def events(self, name: str, since: float | None = None) -> list[dict[str, Any]]:
        """Replica ``name``'s audit events, from its chain (file log, or its rows); with
        ``since`` (a ``time.time()``), only those generated at or after it."""
        if self.siem_port:
            out = [json.loads(r[0]) for r in self.chain(name)]
        else:
            log = self.replicas[name].data / "audit" / "audit.log"
            out = []
            for line in log.read_text(errors="replace").splitlines():
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        if since is None:
            return out
        return [e for e in out if generated_at(e) >= since]

    def chain(self, chain_id: str) -> list[Any]:
        """The rows (record, seq) of one durable audit chain, in order."""
        return self._query(
            "SELECT record, seq FROM audit_chain_events WHERE chain_id = :c ORDER BY seq",
            c=chain_id,
        )

    def chain_ids(self) -> list[str]:
        return [r[0] for r in self._query("SELECT chain_id FROM audit_chains ORDER BY chain_id")]

    def stop(self) -> None:
        others = [self.procs.pop(n) for n in list(self.procs) if n.startswith("broker-")]
        for p in others:
            if p.poll() is None:
                p.terminate()  # all at once: each drains on its own
        for p in others:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        super().stop()


def generated_at(event: dict[str, Any]) -> float:
    """An audit event's ``TimeGenerated``, as a ``time.time()``."""
    stamp = str(event["TimeGenerated"]).replace("Z", "+00:00")
    return datetime.fromisoformat(stamp).timestamp()


def api(d: Cluster, name: str) -> str:
    """Replica ``name``'s HTTP API."""
    return f"http://127.0.0.1:{d.replicas[name].api_port}"


def token(d: Cluster, user: str) -> str:
    """``user``'s access token, as ``hoshu login`` saved it."""
    data = json.loads((d.root / "users" / user / "token.json").read_text())
    return str(data.get("access_token") or data.get("token"))


def wait(what: str, cond: Any, deadline_s: float = WAIT_S) -> Any:
    return poll_sync(cond, deadline_s, what=what, interval_s=0.1)
