"""The control plane as the SSH side sees it: gateway directory and access policy.

:class:`StoreGatewayDirectory` implements the tunnel's ``GatewayDirectory``
and :class:`StoreAccessPolicy` the front door's ``AccessPolicy``
(contracts.md).  Both deny by default: an unknown, revoked or inactive
gateway, engineer, key, grant or instrument yields ``None``.  The hot calls
(``check_totp``, ``find_grant``, ``grant_end``) are one short transaction over
indexed columns.  A grant stops working the moment its engineer is
deactivated or expires, it is revoked or over, or the vendor's contract no
longer covers its instruments: the one rule, :func:`broker.access.grants.grant_holds`.
The result types are the front door's own (``broker.access.door``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from broker.access import certs, commandrules, sshkeys
from broker.access.auth import account_usable
from broker.access.door import Engineer, GrantEnd, GrantView, InstrumentTarget, TotpResult
from broker.access.errors import InvalidInput
from broker.access.grants import LIVE, contract_holds, grant_holds, grant_in_window
from broker.access.model import (
    Gateway,
    Grant,
    GrantStatus,
    Instrument,
    Org,
    Policy,
    SshKey,
    User,
)
from broker.access.permissions import role_allows
from broker.access.services import Services
from wire.models import GatewayRecord, InventoryItem

BATCH = 500  # gateways asked about in one query (a sweep asks about every tunnel held)


class StoreGatewayDirectory:
    """``GatewayDirectory`` over the store."""

    def __init__(self, services: Services) -> None:
        self.s = services

    def gateway_for_key(self, openssh_public_key: str) -> GatewayRecord | None:
        return self.gateways_for_keys([openssh_public_key])[0]

    def gateways_for_keys(self, key_lines: Sequence[str]) -> list[GatewayRecord | None]:
        """:meth:`gateway_for_key` of each key, in order, in one transaction of two
        queries (the endpoint's revocation sweep asks about every held tunnel)."""
        fps: list[str | None] = []
        for line in key_lines:
            try:
                fps.append(sshkeys.parse(line)[1])
            except InvalidInput:
                fps.append(None)
        wanted = sorted({fp for fp in fps if fp is not None})
        found: dict[str, GatewayRecord] = {}
        for start in range(0, len(wanted), BATCH):
            with self.s.ctx.uow() as tx:
                gws = tx.find(Gateway, key_fingerprint=wanted[start : start + BATCH], active=True)
                hospitals = {
                    h.id for h in tx.find(Org, id=sorted({g.hospital_id for g in gws})) if h.active
                }
            for gw in gws:
                if gw.hospital_id in hospitals:
                    found.setdefault(
                        gw.key_fingerprint, GatewayRecord(gw.id, gw.hospital_id, gw.name)
                    )
        return [found.get(fp) if fp is not None else None for fp in fps]

    def windows_for(self, gateway_id: str, now: datetime) -> list[tuple[datetime, datetime]]:
        return self.windows_for_gateways([gateway_id], now)[0]

    def windows_for_gateways(
        self, gateway_ids: Sequence[str], now: datetime
    ) -> list[list[tuple[datetime, datetime]]]:
        """:meth:`windows_for` of each gateway, in order, in one transaction of three
        queries per :data:`BATCH` gateways (the endpoint's windows sweep)."""
        out: dict[str, list[tuple[datetime, datetime]]] = {}
        ids = sorted(set(gateway_ids))
        for start in range(0, len(ids), BATCH):
            with self.s.ctx.uow() as tx:
                gws = [g for g in tx.find(Gateway, id=ids[start : start + BATCH]) if g.active]
                names: dict[str, set[str]] = {g.id: set() for g in gws}
                hospital_of = {g.id: g.hospital_id for g in gws}
                for i in tx.find(Instrument, gateway_id=sorted(names), active=True):
                    if hospital_of[str(i.gateway_id)] == i.hospital_id:  # its own hospital's
                        names[str(i.gateway_id)].add(i.name)
                hospitals = sorted({g.hospital_id for g in gws})
                grants = tx.find(Grant, hospital_id=hospitals, status=list(LIVE)) if gws else []
            for gw in gws:
                mine = names[gw.id]
                out[gw.id] = sorted(
                    {
                        (max(g.starts_at, now), g.ends_at)
                        for g in grants
                        if g.hospital_id == gw.hospital_id
                        and g.ends_at > now
                        and mine.intersection(g.instruments)
                    }
                )
        return [out.get(g, []) for g in gateway_ids]

    def record_inventory(self, gateway_id: str, instruments: list[InventoryItem]) -> None:
        self.s.gateways.record_inventory(gateway_id, list(instruments))


class StoreAccessPolicy:
    """``AccessPolicy`` over the store and the auth service."""

    def __init__(self, services: Services) -> None:
        self.s = services

    def engineer_for_key(self, username: str, openssh_public_key: str) -> Engineer | None:
        try:
            key, fp, _ = sshkeys.parse(openssh_public_key)
        except InvalidInput:
            return None
        now = self.s.ctx.now()
        with self.s.ctx.uow() as tx:
            user = tx.one(User, name=username)
            if user is None or not account_usable(user, now) or not user.totp_enrolled:
                return None
            org = tx.get(Org, user.org_id)
            if (
                org is None
                or not org.active
                or not role_allows(user.roles, "ssh.login", str(org.kind))
            ):
                return None
            if not any(
                k.public_key == key and k.revoked_at is None
                for k in tx.find(SshKey, user_id=user.id, fingerprint=fp)
            ):
                return None
            return Engineer(
                user.id,
                user.name,
                org.name,
                tuple(org.source_cidrs),
                roles=frozenset(str(r) for r in user.roles),
                org_kind=str(org.kind),
            )

    def check_totp(
        self,
        user_id: str,
        code: str,
        now: datetime,
        *,
        src_ip: str | None = None,
        hospital_id: str | None = None,
    ) -> TotpResult:
        """The domain checks the code and alone writes the failure and lockout events."""
        r = self.s.auth.check_totp(user_id, code, now, src_ip, hospital_id=hospital_id)
        return TotpResult(r.ok, r.reason, r.failures, r.locked_now, r.locked_until)

    def hospital_of(self, instrument: str) -> str | None:
        with self.s.ctx.uow() as tx:
            inst = tx.one(Instrument, name=instrument)
            return inst.hospital_id if inst is not None else None

    def clipboard_allowed(self, hospital_id: str) -> bool:
        """The hospital's policy lets desktop sessions relay the clipboard (no policy,
        or no such hospital: off)."""
        with self.s.ctx.uow() as tx:
            policy = tx.get(Policy, hospital_id)
            return bool(policy is not None and policy.clipboard_allowed)

    def drive_allowed(self, hospital_id: str) -> bool:
        """The hospital's policy gives RDP desktop sessions the broker's drive (no
        policy, or no such hospital: off)."""
        with self.s.ctx.uow() as tx:
            policy = tx.get(Policy, hospital_id)
            return bool(policy is not None and policy.drive_allowed)

    def cert_usable(self, user_id: str, serial: int, now: datetime) -> str | None:
        with self.s.ctx.uow() as tx:
            return certs.cert_refusal(tx, user_id, serial, now)

    def record_cert(
        self, user_id: str, serial: int, issued_at: datetime, valid_until: datetime
    ) -> None:
        certs.record_cert(self.s.ctx, user_id, serial, issued_at, valid_until)

    def find_grant(
        self, user_id: str, instrument: str, port: int, now: datetime
    ) -> GrantView | None:
        with self.s.ctx.uow() as tx:
            user = tx.get(User, user_id)
            inst = tx.one(Instrument, name=instrument)
            if (
                user is None
                or not account_usable(user, now)
                or inst is None
                or not inst.active
                or inst.pending_host_key_fingerprint is not None
            ):
                return None
            for g in tx.find(Grant, user_id=user_id, status=list(LIVE), order_by="ends_at"):
                if (
                    instrument in g.instruments
                    and port in g.ports
                    and g.hospital_id == inst.hospital_id
                    and grant_holds(tx, g, now, instruments=[instrument])
                ):
                    return GrantView(
                        g.id,
                        g.user_id,
                        instrument,
                        tuple(g.ports),
                        g.ends_at,
                        g.file_transfer,
                        g.hospital_id,
                        g.emergency,
                    )
        return None

    def grant_end(self, grant_id: str, user_id: str, now: datetime) -> GrantEnd:
        """Until when the grant holds, or why it no longer does (never "revoked" for an
        expiry: the end reason is what work reports show)."""
        with self.s.ctx.uow() as tx:
            g = tx.get(Grant, grant_id)
            if g is None or g.user_id != user_id:
                return GrantEnd(None, "grant_unknown")
            if g.status == GrantStatus.REVOKED.value:
                return GrantEnd(None, "grant_revoked")
            if g.status == GrantStatus.ENDED.value:
                return GrantEnd(None, "grant_ended")
            if g.status == GrantStatus.EXPIRED.value or now >= g.ends_at:
                return GrantEnd(None, "grant_expired")
            if not grant_in_window(g, now):
                return GrantEnd(None, "grant_not_started")
            user = tx.get(User, user_id)
            if user is None or not account_usable(user, now):
                return GrantEnd(None, "engineer_inactive")
            if not contract_holds(tx, g, g.instruments, now):
                return GrantEnd(None, "contract_ended")
            return GrantEnd(g.ends_at)

    def instrument(self, name: str) -> InstrumentTarget | None:
        with self.s.ctx.uow() as tx:
            inst = tx.one(Instrument, name=name)
            if inst is None or not inst.active or not inst.gateway_id:
                return None
            gw = tx.get(Gateway, inst.gateway_id)
            if gw is None or not gw.active:
                return None
            hospital_policy = tx.get(Policy, inst.hospital_id)
        credential = self.s.ctx.secrets.open(inst.credential_enc) if inst.credential_enc else ""
        accepted = None if inst.pending_host_key_fingerprint else inst.host_key_fingerprint
        return InstrumentTarget(
            inst.name,
            inst.hospital_id,
            inst.gateway_id,
            inst.host,
            inst.ssh_port,
            tuple(inst.ports),
            inst.login_username,
            credential,
            accepted,
            protocol=inst.protocol,
            keyboard_layout=inst.keyboard_layout,
            record_input=bool(hospital_policy and hospital_policy.record_input),
            command_rules=commandrules.rules_for(
                hospital_policy.command_rules if hospital_policy else (), inst.name, inst.department
            ),
        )
