"""Gateways: one-time enrolment tokens, enrolment, inventory reports.

Token text: ``hoshu-enroll-v1.<token_id>.<secret>.<fp>`` where ``fp`` is
base64url (no padding) SHA-256 of the broker tunnel host key blob, so the
gateway can pin the key the broker answers with.  Only SHA-256 of the secret
is stored; a token is single use and expires.  Forged or unknown tokens are
refused with :class:`Unauthenticated`, used or expired ones with
:class:`Gone`; each refusal writes ``gateway.enrollment_refused``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from audit.events import Result
from broker.access import names, sshkeys
from broker.access.errors import Conflict, Gone, InvalidInput, NotFound, Unauthenticated
from broker.access.estate import EstateService
from broker.access.model import EnrolmentToken, Gateway, Instrument, Org, OrgKind
from broker.access.people import is_platform, sees_all
from broker.access.ports import SYSTEM, Actor, Context
from broker.access.signin_failures import CountedFailures
from wire.models import InventoryItem  # the one inventory-row shape (the contract's)
from wire.names import PROTOCOL_VERSION

PREFIX = "hoshu-enroll-v1"
MAX_TTL_S = 7 * 86400


def key_pin(openssh_line: str) -> str:
    digest = hashlib.sha256(sshkeys.blob_of(openssh_line)).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class IssuedEnrolment:
    token: str
    token_id: str
    hospital: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class Enrolled:
    gateway_id: str
    hospital_id: str
    hospital: str
    broker_host_key: str
    tunnel_host: str
    tunnel_port: int
    protocol_version: int = PROTOCOL_VERSION


class GatewayService:
    def __init__(self, ctx: Context, estate: EstateService) -> None:
        self.ctx = ctx
        self.estate = estate
        # refusals of callers with no valid token: counted per source per minute
        self.strangers = CountedFailures(
            ctx, "gateway.enrollment_refused", "gateway.enrollment_flood"
        )

    def issue_token(self, actor: Actor, hospital: str, ttl_s: int = 3600) -> IssuedEnrolment:
        if not 60 <= ttl_s <= MAX_TTL_S:
            raise InvalidInput(f"ttl_s must be between 60 and {MAX_TTL_S}")
        host_key = self.ctx.config.broker_host_key
        if not host_key:
            raise Conflict("the broker tunnel host key is not configured")
        now = self.ctx.now()
        with self.ctx.uow() as tx:
            hosp = self.estate._hospital_for_change(tx, actor, hospital)
            secret = self.ctx.random_token(32)
            tok = EnrolmentToken(
                self.ctx.new_id(),
                hosp.id,
                _sha(secret),
                now,
                now + timedelta(seconds=ttl_s),
                actor.user_id,
            )
            tx.add(tok)
            text = f"{PREFIX}.{tok.id}.{secret}.{key_pin(host_key)}"
            self.ctx.emit(
                "gateway.token_issued",
                actor,
                ObjectType="gateway_token",
                Object=tok.id,
                HospitalId=hosp.id,
                details={"expires": tok.expires_at.isoformat(), "token": text},
            )
            return IssuedEnrolment(text, tok.id, hosp.name, tok.expires_at)

    def _refuse(
        self, reason: str, exc: Exception, src_ip: str | None, hospital_id: str | None = None
    ) -> Exception:
        if hospital_id is None:  # no valid token: anyone can send these, aggregated
            self.strangers.record(src_ip, reason)
            return exc
        self.ctx.emit(
            "gateway.enrollment_refused",
            None,
            result=Result.FAILURE,
            SrcIpAddr=src_ip,
            EventResultDetails=reason,
            HospitalId=hospital_id,
        )
        return exc

    def enroll(
        self, token: str, public_key: str, name: str, version: str, src_ip: str | None = None
    ) -> Enrolled:
        now = self.ctx.now()
        parts = token.split(".")
        if len(parts) != 4 or parts[0] != PREFIX:
            raise self._refuse(
                "malformed token", Unauthenticated("invalid enrolment token"), src_ip
            )
        _, token_id, secret, _pin = parts
        key, fp, _ = sshkeys.parse(public_key)
        names.slug(name, "gateway name")
        with self.ctx.uow() as tx:
            tok = tx.get(EnrolmentToken, token_id, for_update=True)
            if tok is None or not hmac.compare_digest(tok.secret_hash, _sha(secret)):
                raise self._refuse(
                    "unknown or forged token", Unauthenticated("invalid enrolment token"), src_ip
                )
            if tok.used_at is not None:
                raise self._refuse(
                    "token already used",
                    Gone("enrolment token already used"),
                    src_ip,
                    tok.hospital_id,
                )
            if tok.expires_at <= now:
                raise self._refuse(
                    "token expired", Gone("enrolment token expired"), src_ip, tok.hospital_id
                )
            if tx.one(Gateway, name=name) is not None:
                raise self._refuse(
                    "gateway name taken",
                    Conflict(f"gateway {name!r} already exists"),
                    src_ip,
                    tok.hospital_id,
                )
            if any(g.active for g in tx.find(Gateway, key_fingerprint=fp)):
                raise self._refuse(
                    "key already enrolled",
                    Conflict("this key is already enrolled"),
                    src_ip,
                    tok.hospital_id,
                )
            hosp = tx.get(Org, tok.hospital_id)
            assert hosp is not None
            gw = Gateway(self.ctx.new_id(), hosp.id, name, key, fp, now, version[:64])
            tx.add(gw)
            tok.used_at = now
            tok.gateway_id = gw.id
            tx.save(tok)
            self.ctx.emit(
                "gateway.enrolled",
                None,
                ActorUsername=f"gateway:{name}",
                ActorUserType="service",
                SrcIpAddr=src_ip,
                GatewayId=gw.id,
                HospitalId=hosp.id,
                ObjectType="gateway",
                Object=name,
                details={"key_fingerprint": fp, "version": version[:64]},
            )
            cfg = self.ctx.config
            return Enrolled(
                gw.id, hosp.id, hosp.name, cfg.broker_host_key, cfg.tunnel_host, cfg.tunnel_port
            )

    def list_gateways(self, actor: Actor) -> list[Gateway]:
        with self.ctx.uow() as tx:
            if sees_all(actor):
                return tx.find(Gateway, order_by="name")
            if actor.org_kind != OrgKind.HOSPITAL:
                return []
            return tx.find(Gateway, hospital_id=actor.org_id, order_by="name")

    def revoke(self, actor: Actor, ref: str) -> Gateway:
        with self.ctx.uow() as tx:
            gw = tx.get(Gateway, ref) or tx.one(Gateway, name=ref)
            if gw is None or not (is_platform(actor) or gw.hospital_id == actor.org_id):
                raise NotFound(f"no gateway {ref!r}")
            if not gw.active:
                raise Conflict("gateway already revoked")
            gw.active = False
            tx.save(gw)
            self.ctx.emit(
                "admin.change",
                actor,
                Operation="revoke",
                ObjectType="gateway",
                Object=gw.name,
                GatewayId=gw.id,
                HospitalId=gw.hospital_id,
            )
            return gw

    def record_inventory(self, gateway_id: str, items: list[InventoryItem]) -> None:
        """Upsert what a gateway reports; a changed host key blocks sessions until accepted."""
        now = self.ctx.now()
        with self.ctx.uow() as tx:
            gw = tx.get(Gateway, gateway_id)
            if gw is None or not gw.active:
                raise NotFound("no such gateway")
            report: list[dict[str, Any]] = []
            for item in items:
                inst = tx.one(Instrument, name=item.name)
                if inst is None:
                    inst = Instrument(
                        self.ctx.new_id(),
                        gw.hospital_id,
                        item.name,
                        item.host,
                        now,
                        gateway_id=gw.id,
                        ports=sorted(item.ports),
                        protocol=item.protocol,
                        department=item.department,
                        model=item.model,
                        host_key_fingerprint=item.host_key_fingerprint,
                    )
                    tx.add(inst)
                elif inst.hospital_id != gw.hospital_id:
                    continue  # another hospital's name: never touched by this gateway
                inst.reachable = item.reachable
                inst.last_seen_at = now
                inst.gateway_id = inst.gateway_id or gw.id
                fp = item.host_key_fingerprint
                if fp and inst.host_key_fingerprint is None:
                    inst.host_key_fingerprint = fp
                elif (
                    fp
                    and fp != inst.host_key_fingerprint
                    and fp != inst.pending_host_key_fingerprint
                ):
                    self.ctx.emit(
                        "instrument.key_changed",
                        SYSTEM,
                        ObjectType="instrument",
                        Object=inst.name,
                        TargetHostname=inst.name,
                        HospitalId=inst.hospital_id,
                        GatewayId=gw.id,
                        details={
                            "old_fingerprint": inst.host_key_fingerprint,
                            "new_fingerprint": fp,
                        },
                    )
                    inst.pending_host_key_fingerprint = fp
                tx.save(inst)
                report.append({"name": item.name, "reachable": item.reachable})
            gw.last_inventory_at = now
            tx.save(gw)
            self.ctx.emit(
                "gateway.inventory",
                None,
                ActorUsername=f"gateway:{gw.name}",
                ActorUserType="service",
                GatewayId=gw.id,
                HospitalId=gw.hospital_id,
                details={"instruments": report},
            )
