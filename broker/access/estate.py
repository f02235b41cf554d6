"""Contracts, hospital policies, instruments and their credentials.

Scoping: hospital admins change only their own hospital; platform admins any.
Hospital staff see their hospital's instruments; vendor users see only the
instruments their vendor's active contracts cover.  Credentials are
write-only: they are sealed on arrival and only :mod:`broker.store.directory`
opens them, for the broker's own onward login.
"""

from __future__ import annotations

from dataclasses import fields, replace
from datetime import datetime
from typing import Any

from broker.access import commandrules, names, rules
from broker.access.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from broker.access.model import Contract, Gateway, Instrument, Org, OrgKind, Policy, Role
from broker.access.people import find_org, is_platform, sees_all
from broker.access.ports import Actor, Context, Tx
from wire.names import INSTRUMENT_PROTOCOLS

CRITICALITIES = ("low", "normal", "high", "critical")
PROTOCOLS = tuple(sorted(INSTRUMENT_PROTOCOLS))
# the keyboard the broker announces to an RDP instrument and types on: a US PC keyboard,
# or a Japanese (JIS 106/109) one (broker.desktop.keyboards)
KEYBOARD_LAYOUTS = ("en-US", "ja-JP")
POLICY_FIELDS = frozenset(f.name for f in fields(Policy)) - {"id", "hospital_id", "updated_at"}
INSTRUMENT_EDITABLE = frozenset(
    {
        "host",
        "gateway",
        "ssh_port",
        "ports",
        "protocol",
        "keyboard_layout",
        "department",
        "model",
        "vendor",
        "criticality",
        "login_username",
        "active",
    }
)


def contract_covers(contract: Contract, instrument: str, now: datetime) -> bool:
    if not contract.active or (contract.valid_until and contract.valid_until <= now):
        return False
    return "*" in contract.instruments or instrument in contract.instruments


def _check_port(p: int) -> int:
    if not 1 <= p <= 65535:
        raise InvalidInput(f"port {p} out of range")
    return p


class EstateService:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    # --- scoping helpers ----------------------------------------------------
    def _hospital_for_change(self, tx: Tx, actor: Actor, ref: str | None) -> Org:
        hosp = find_org(tx, ref) if ref else find_org(tx, actor.org_id)
        if hosp.kind != OrgKind.HOSPITAL:
            raise InvalidInput(f"{hosp.name} is not a hospital")
        if not is_platform(actor) and hosp.id != actor.org_id:
            raise PermissionDenied("you may only change your own hospital")
        return hosp

    def instrument_visible(self, tx: Tx, actor: Actor, inst: Instrument) -> bool:
        if sees_all(actor) or inst.hospital_id == actor.org_id:
            return True
        if actor.org_kind == OrgKind.VENDOR:
            return any(
                contract_covers(c, inst.name, self.ctx.now())
                for c in tx.find(Contract, vendor_id=actor.org_id, hospital_id=inst.hospital_id)
            )
        return False

    def get_instrument(self, tx: Tx, actor: Actor, name: str) -> Instrument:
        inst = tx.one(Instrument, name=name) or tx.get(Instrument, name)
        if inst is None or not self.instrument_visible(tx, actor, inst):
            raise NotFound(f"no instrument {name!r}")
        return inst

    # --- contracts ------------------------------------------------------------------
    def create_contract(
        self,
        actor: Actor,
        vendor: str,
        hospital: str,
        instruments: list[str],
        valid_until: datetime | None = None,
        reference: str = "",
    ) -> Contract:
        if not instruments:
            raise InvalidInput("name the instruments the contract covers, or '*'")
        with self.ctx.uow() as tx:
            hosp = self._hospital_for_change(tx, actor, hospital)
            vend = find_org(tx, vendor)
            if vend.kind != OrgKind.VENDOR:
                raise InvalidInput(f"{vend.name} is not a vendor")
            for name in instruments:
                if name != "*" and tx.one(Instrument, name=name, hospital_id=hosp.id) is None:
                    raise InvalidInput(f"{hosp.name} has no instrument {name!r}")
            c = Contract(
                self.ctx.new_id(),
                vend.id,
                hosp.id,
                sorted(set(instruments)),
                self.ctx.now(),
                actor.user_id,
                valid_until,
                True,
                reference,
            )
            tx.add(c)
            self.ctx.emit(
                "admin.change",
                actor,
                Operation="create",
                ObjectType="contract",
                Object=c.id,
                HospitalId=hosp.id,
                VendorId=vend.id,
                details={"changes": {"instruments": c.instruments, "reference": reference}},
            )
            return c

    def list_contracts(self, actor: Actor) -> list[Contract]:
        with self.ctx.uow() as tx:
            if sees_all(actor):
                return tx.find(Contract, order_by="created_at")
            key = "vendor_id" if actor.org_kind == OrgKind.VENDOR else "hospital_id"
            where: dict[str, Any] = {key: actor.org_id}
            return tx.find(Contract, order_by="created_at", **where)

    def end_contract(self, actor: Actor, contract_id: str) -> Contract:
        with self.ctx.uow() as tx:
            c = tx.get(Contract, contract_id)
            if c is None or not (is_platform(actor) or c.hospital_id == actor.org_id):
                raise NotFound("no such contract")
            if not c.active:
                raise Conflict("contract already ended")
            c.active = False
            tx.save(c)
            self.ctx.emit(
                "admin.change",
                actor,
                Operation="end",
                ObjectType="contract",
                Object=c.id,
                HospitalId=c.hospital_id,
                VendorId=c.vendor_id,
            )
            return c

    # --- policies ----------------------------------------------------------------
    @staticmethod
    def policy_in(tx: Tx, hospital_id: str, now: datetime) -> Policy:
        return tx.get(Policy, hospital_id) or Policy(hospital_id, hospital_id, now)

    def show_policy(self, actor: Actor, hospital: str) -> Policy:
        with self.ctx.uow() as tx:
            hosp = find_org(tx, hospital)
            if hosp.kind != OrgKind.HOSPITAL:
                raise NotFound(f"no hospital {hospital!r}")
            return self.policy_in(tx, hosp.id, self.ctx.now())

    def update_policy(self, actor: Actor, hospital: str, changes: dict[str, Any]) -> Policy:
        unknown = set(changes) - POLICY_FIELDS
        if unknown:
            raise InvalidInput(f"unknown policy fields: {', '.join(sorted(unknown))}")
        if "command_rules" in changes:
            changes = {**changes, "command_rules": commandrules.validate(changes["command_rules"])}
        with self.ctx.uow() as tx:
            hosp = self._hospital_for_change(tx, actor, hospital)
            old = tx.get(Policy, hosp.id)
            base = old or Policy(hosp.id, hosp.id, self.ctx.now())
            new = replace(base, updated_at=self.ctx.now(), **changes)
            if not 60 <= new.max_duration_s <= 30 * 86400:
                raise InvalidInput("max_duration_s must be between 60 s and 30 days")
            if not 60 <= new.emergency_max_duration_s <= new.max_duration_s:
                raise InvalidInput("emergency_max_duration_s must be 60 s..max_duration_s")
            if new.approvals_required not in (1, 2) or new.critical_approvals_required not in (
                1,
                2,
            ):
                raise InvalidInput("approvals required must be 1 or 2")
            if not 300 <= new.request_ttl_s <= 90 * 86400:
                raise InvalidInput("request_ttl_s must be between 5 minutes and 90 days")
            rules.validate_hours(new)
            tx.save(new) if old else tx.add(new)
            self.ctx.emit(
                "admin.change",
                actor,
                Operation="update",
                ObjectType="policy",
                Object=hosp.name,
                HospitalId=hosp.id,
                details={"changes": {k: v for k, v in changes.items()}},
            )
            return new

    # --- instruments ---------------------------------------------------------------
    def _validate_instrument(self, tx: Tx, inst: Instrument) -> None:
        names.slug(inst.name, "instrument name")
        if not inst.host or len(inst.host) > 253:
            raise InvalidInput("host is required")
        _check_port(inst.ssh_port)
        inst.ports = sorted({_check_port(p) for p in inst.ports})
        if inst.criticality not in CRITICALITIES:
            raise InvalidInput(f"criticality must be one of {', '.join(CRITICALITIES)}")
        if inst.protocol not in PROTOCOLS:
            raise InvalidInput(f"protocol must be one of {', '.join(PROTOCOLS)}")
        if inst.keyboard_layout not in KEYBOARD_LAYOUTS:
            raise InvalidInput(f"keyboard_layout must be one of {', '.join(KEYBOARD_LAYOUTS)}")
        if inst.gateway_id is not None:
            gw = tx.get(Gateway, inst.gateway_id) or tx.one(Gateway, name=inst.gateway_id)
            if gw is None or gw.hospital_id != inst.hospital_id:
                raise InvalidInput("gateway must be one of this hospital's gateways")
            inst.gateway_id = gw.id

    def create_instrument(
        self, actor: Actor, hospital: str | None, values: dict[str, Any]
    ) -> Instrument:
        with self.ctx.uow() as tx:
            hosp = self._hospital_for_change(tx, actor, hospital)
            gateway = values.pop("gateway", None)
            inst = Instrument(
                id=self.ctx.new_id(),
                hospital_id=hosp.id,
                created_at=self.ctx.now(),
                gateway_id=gateway,
                **values,
            )
            self._validate_instrument(tx, inst)
            if tx.one(Instrument, name=inst.name) is not None:
                raise Conflict(f"instrument {inst.name!r} already exists")
            tx.add(inst)
            self.ctx.emit(
                "admin.change",
                actor,
                Operation="create",
                ObjectType="instrument",
                Object=inst.name,
                HospitalId=hosp.id,
                GatewayId=inst.gateway_id,
                TargetHostname=inst.name,
                details={"changes": {k: v for k, v in values.items()}},
            )
            return inst

    def update_instrument(self, actor: Actor, name: str, changes: dict[str, Any]) -> Instrument:
        unknown = set(changes) - INSTRUMENT_EDITABLE
        if unknown:
            raise InvalidInput(f"these fields cannot be changed: {', '.join(sorted(unknown))}")
        with self.ctx.uow() as tx:
            inst = self.get_instrument(tx, actor, name)
            self._hospital_for_change(tx, actor, inst.hospital_id)
            if "gateway" in changes:
                changes["gateway_id"] = changes.pop("gateway")
            new = replace(inst, **changes)
            self._validate_instrument(tx, new)
            tx.save(new)
            self.ctx.emit(
                "admin.change",
                actor,
                Operation="update",
                ObjectType="instrument",
                Object=inst.name,
                HospitalId=inst.hospital_id,
                TargetHostname=inst.name,
                details={"changes": changes},
            )
            return new

    def list_instruments(self, actor: Actor) -> list[Instrument]:
        with self.ctx.uow() as tx:
            return [
                i
                for i in tx.find(Instrument, order_by="name")
                if self.instrument_visible(tx, actor, i)
            ]

    def show_instrument(self, actor: Actor, name: str) -> Instrument:
        with self.ctx.uow() as tx:
            return self.get_instrument(tx, actor, name)

    def set_credential(
        self, actor: Actor, name: str, kind: str, secret: str, username: str | None = None
    ) -> Instrument:
        """Store the broker's login for an instrument, sealed; it is never returned."""
        if kind not in ("password", "private_key"):
            raise InvalidInput("credential kind must be password or private_key")
        if not secret or len(secret) > 16384:
            raise InvalidInput("credential must be 1..16384 characters")
        with self.ctx.uow() as tx:
            inst = self.get_instrument(tx, actor, name)
            self._hospital_for_change(tx, actor, inst.hospital_id)
            inst.credential_enc = self.ctx.secrets.seal(secret)
            inst.credential_kind = kind
            if username:
                inst.login_username = username
            tx.save(inst)
            self.ctx.emit(
                "admin.change",
                actor,
                Operation="set_credential",
                ObjectType="instrument",
                Object=inst.name,
                HospitalId=inst.hospital_id,
                TargetHostname=inst.name,
                details={"changes": {"kind": kind, "username": inst.login_username}},
            )
            return inst

    def accept_host_key(self, actor: Actor, name: str, fingerprint: str) -> Instrument:
        """An approver of the hospital accepts a changed host key; sessions resume."""
        with self.ctx.uow() as tx:
            inst = self.get_instrument(tx, actor, name)
            if inst.hospital_id != actor.org_id:
                raise PermissionDenied("only the instrument's hospital accepts its host key")
            if inst.pending_host_key_fingerprint is None:
                raise Conflict("no changed host key is waiting")
            if fingerprint != inst.pending_host_key_fingerprint:
                raise Conflict("that is not the pending fingerprint (it may have changed again)")
            inst.host_key_fingerprint = fingerprint
            inst.pending_host_key_fingerprint = None
            tx.save(inst)
            self.ctx.emit(
                "instrument.key_accepted",
                actor,
                ObjectType="instrument",
                Object=inst.name,
                TargetHostname=inst.name,
                HospitalId=inst.hospital_id,
                details={"fingerprint": fingerprint},
            )
            return inst

    def is_hospital_staff(self, actor: Actor) -> bool:
        return actor.org_kind == OrgKind.HOSPITAL and bool(
            {Role.APPROVER, Role.HOSPITAL_ADMIN, Role.AUDITOR} & actor.roles
        )
