"""Three real ``hoshu serve`` replicas on one real PostgreSQL, the demo's gateway and lab.

Replica ``a`` is the demo's broker (bootstrap, people, hospital, gateway enrolment and
instruments are done through it, as in :class:`hoshu_demo.demo.Demo`).  Replicas
``b`` and ``c`` get a data directory of their own and a copy of the shared keys (the
tunnel host key the gateway pinned, the user CA, the front-door host key, the sealing
and audit keys: what the key store shares between replicas); each replica's peer key
is its own.  :meth:`Cluster.tunnel_to` restarts the gateway with ``[broker] addresses``
naming the chosen replicas only.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from hoshu_demo.demo import Demo, _tool, free_port
from tests.support import poll_sync

WAIT_S = 60.0  # three brokers, a gateway, sshd and PostgreSQL on two cores


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
                lambda r=r: all(  # type: ignore[misc]
                    _listening(p) for p in (r.api_port, r.ssh_port, r.tunnel_port, r.peer_port)
                ),
                WAIT_S,
            )
        self._wait_for(
            "every replica registered", lambda: set(self.live()) >= {"a", *names}, WAIT_S
        )

    def start_replica(self, name: str) -> None:
        self._spawn(
            f"broker-{name}", [_tool("hoshu"), "serve"], self.replica_env(self.replicas[name])
        )

    def kill(self, name: str) -> None:
        """SIGKILL replica ``name`` (no drain, no deregistration)."""
        proc = self.procs.pop("broker" if name == "a" else f"broker-{name}")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

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

    def events(self, name: str) -> list[dict[str, Any]]:
        log = self.replicas[name].data / "audit" / "audit.log"
        out = []
        for line in log.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def stop(self) -> None:
        for name in list(self.procs):
            if name.startswith("broker-"):
                p = self.procs.pop(name)
                if p.poll() is None:
                    p.terminate()
                    try:
                        p.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        p.kill()
                        p.wait(timeout=5)
        super().stop()


def wait(what: str, cond: Any, deadline_s: float = WAIT_S) -> Any:
    return poll_sync(cond, deadline_s, what=what, interval_s=0.1)
