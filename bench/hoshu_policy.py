"""The access policy and gateway directory the benchmark broker runs with.

In memory, with the control plane's documented behaviour (contracts.md):
an engineer is known by user name + registered key; a TOTP code is checked
with :func:`broker.access.totp.verify` and accepted once (the last accepted
time step is kept per user); a grant names one engineer, one instrument and
its ports, and ends; the instrument carries the injected credential and the
accepted host-key fingerprint.  The control plane's store answers the same
questions with one short indexed transaction each; that cost is not in the
figures (see docs/benchmarks.md).

The benchmark configuration is one JSON file written by the harness.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from broker.access import totp
from broker.access.door import Engineer, GrantEnd, GrantView, InstrumentTarget, TotpResult
from wire import GatewayRecord, InventoryItem


def _key_id(openssh_public_key: str) -> str:
    return " ".join(openssh_public_key.split()[:2])


@dataclass
class _Person:
    engineer: Engineer
    key: str
    secret: str
    last_step: int = -1


class BenchPolicy:
    """``AccessPolicy`` over the benchmark's engineers, one instrument and its grants."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.people: dict[str, _Person] = {}
        for e in cfg["engineers"]:
            eng = Engineer(
                user_id=f"u-{e['username']}",
                username=e["username"],
                organization="bench-vendor",
                roles=frozenset({"engineer"}),
                org_kind="vendor",
            )
            self.people[e["username"]] = _Person(eng, _key_id(e["public_line"]), e["secret"])
        self.by_id = {p.engineer.user_id: p for p in self.people.values()}
        i = cfg["instrument"]
        self.target = InstrumentTarget(
            name=i["name"],
            hospital_id=cfg["gateway"]["hospital_id"],
            gateway_id=cfg["gateway"]["gateway_id"],
            host=i["host"],
            ssh_port=i["ssh_port"],
            ports=tuple(i["ports"]),
            username=i["username"],
            credential=i["credential"],
            host_key_fingerprint=i["host_key_fingerprint"],
        )
        self.ends = datetime.now(UTC) + timedelta(hours=2)

    def engineer_for_key(self, username: str, openssh_public_key: str) -> Engineer | None:
        p = self.people.get(username)
        return p.engineer if p is not None and p.key == _key_id(openssh_public_key) else None

    def check_totp(
        self,
        user_id: str,
        code: str,
        now: datetime,
        *,
        src_ip: str | None = None,
        hospital_id: str | None = None,
    ) -> TotpResult:
        p = self.by_id.get(user_id)
        if p is None:
            return TotpResult(False, "no_totp")
        step = totp.verify(p.secret, code, now, p.last_step)
        if step is None:
            replay = totp.is_replay(p.secret, code, now, p.last_step)
            return TotpResult(False, "replayed" if replay else "wrong", 1)
        p.last_step = step
        return TotpResult(True)

    def find_grant(
        self, user_id: str, instrument: str, port: int, now: datetime
    ) -> GrantView | None:
        if (
            user_id not in self.by_id
            or instrument != self.target.name
            or port not in self.target.ports
            or now >= self.ends
        ):
            return None
        return GrantView(
            grant_id=f"g-{user_id}",
            user_id=user_id,
            instrument=instrument,
            ports=self.target.ports,
            ends=self.ends,
            hospital_id=self.target.hospital_id,
        )

    def grant_end(self, grant_id: str, user_id: str, now: datetime) -> GrantEnd:
        if grant_id == f"g-{user_id}" and user_id in self.by_id:
            return GrantEnd(self.ends)
        return GrantEnd(None, "grant_unknown")

    def instrument(self, name: str) -> InstrumentTarget | None:
        return self.target if name == self.target.name else None

    def hospital_of(self, instrument: str) -> str | None:
        return self.target.hospital_id if instrument == self.target.name else None

    def record_cert(
        self, user_id: str, serial: int, issued_at: datetime, valid_until: datetime
    ) -> None:
        pass  # the benchmark signs in with key + TOTP only

    def cert_usable(self, user_id: str, serial: int, now: datetime) -> str | None:
        return "certificates are not used by the benchmark"


class BenchDirectory:
    """``GatewayDirectory`` knowing the benchmark's one gateway; a window is always open."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        g = cfg["gateway"]
        self.record = GatewayRecord(
            gateway_id=g["gateway_id"], hospital_id=g["hospital_id"], name=g["name"]
        )
        self.key = _key_id(g["public_line"])
        self.inventory: list[InventoryItem] = []

    def gateway_for_key(self, openssh_public_key: str) -> GatewayRecord | None:
        return self.record if _key_id(openssh_public_key) == self.key else None

    def windows_for(self, gateway_id: str, now: datetime) -> list[tuple[datetime, datetime]]:
        if gateway_id != self.record.gateway_id:
            return []
        return [(now - timedelta(minutes=1), now + timedelta(hours=2))]

    def record_inventory(self, gateway_id: str, instruments: list[InventoryItem]) -> None:
        self.inventory = list(instruments)
