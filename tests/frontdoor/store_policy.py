"""The front door's real policy for the harness: :class:`StoreAccessPolicy` on SQLite.

:func:`store_policy` seeds a control plane (hospital, vendor with a contract,
the instrument behind an enrolled gateway with its credential and accepted
host key, two approvers) and registers the engineer with a key and TOTP.
:class:`StorePolicy` adds the same test helpers as ``FakePolicy`` (grant,
revoke, forget a key, source networks), done through the domain services, so
the front-door tests run unchanged against both.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from broker.access import totp
from broker.access.certs import revoke_cert_serials
from broker.access.door import Engineer, GrantView
from broker.access.model import Org, SshKey, User
from broker.access.people import NewUser
from broker.access.ports import Actor
from broker.access.requests import NewRequest
from broker.access.services import Services
from broker.store.db import Store
from broker.store.directory import StoreAccessPolicy, StoreGatewayDirectory
from labsim.sshd import OpenSSHInstrument
from tests.control.conftest import PASSWORD, actor_for, make_context, openssh_public_key
from wire.models import InventoryItem

_STEP = timedelta(seconds=30)


class StorePolicy(StoreAccessPolicy):
    """``StoreAccessPolicy`` plus the harness's helpers (through the domain services)."""

    def __init__(self, services: Services, store: Store, actors: dict[str, Actor]) -> None:
        super().__init__(services)
        self.store = store
        self.actors = actors
        self.grants: list[GrantView] = []

    def grant(
        self,
        eng: Engineer,
        instrument: str,
        ports: tuple[int, ...],
        *,
        ends: datetime,
        files: bool = False,
    ) -> GrantView:
        now = self.s.ctx.now()
        req = self.s.requests.create(
            self.actors[eng.username],
            NewRequest(
                [instrument],
                int((ends - now).total_seconds()),
                "maintenance",
                ports=list(ports),
                file_transfer=files,
            ),
        )
        grant = (
            self.s.requests.approve(self.actors["appr"], req.id).grant
            or self.s.requests.approve(self.actors["appr2"], req.id).grant
        )
        assert grant is not None
        view = GrantView(
            grant.id,
            eng.user_id,
            instrument,
            tuple(grant.ports),
            grant.ends_at,
            grant.file_transfer,
            grant.hospital_id,
        )
        self.grants.append(view)
        return view

    def revoke(self, grant_id: str) -> None:
        self.s.grants.revoke(self.actors["appr"], grant_id, "work done")

    def forget_key(self, username: str) -> None:
        """The engineer's registered key is revoked (any other key stays unknown)."""
        with self.s.ctx.uow() as tx:
            user = tx.one(User, name=username)
            assert user is not None
            for key in tx.find(SshKey, user_id=user.id):
                key.revoked_at = self.s.ctx.now()
                tx.save(key)

    def set_source_cidrs(self, username: str, cidrs: tuple[str, ...]) -> None:
        with self.s.ctx.uow() as tx:
            user = tx.one(User, name=username)
            assert user is not None
            org = tx.get(Org, user.org_id)
            assert org is not None
            org.source_cidrs = list(cidrs)
            tx.save(org)

    def revoke_certs(self, user_id: str) -> None:
        with self.s.ctx.uow() as tx:
            revoke_cert_serials(tx, user_id, self.s.ctx.now(), "test")

    def close(self) -> None:
        self.store.close()


def store_policy(
    tmp: Path, clock: Any, events: Any, public_line: str, inst: OpenSSHInstrument
) -> tuple[StorePolicy, Engineer, str]:
    """A seeded control plane; returns the policy, the engineer ``alice`` and her TOTP secret."""
    store = Store(f"sqlite:///{tmp / 'control.db'}", migrate=True)
    s = Services.build(make_context(store, events, clock))
    root, _ = s.auth.bootstrap("root", "Platform Admin", PASSWORD)
    admin = actor_for(s, root)
    hospital = s.people.create_org(admin, "hoshi-hospital", "hospital")
    vendor = s.people.create_org(admin, "roche", "vendor")
    other = s.people.create_org(admin, "tsuki-hospital", "hospital")
    actors: dict[str, Actor] = {"root": admin}
    for name, org, role in (
        ("alice", vendor, "engineer"),
        ("appr", hospital, "approver"),
        ("appr2", hospital, "approver"),
        ("hadmin", hospital, "hospital_admin"),
        ("aud", hospital, "auditor"),
        ("other-aud", other, "auditor"),
    ):
        user = s.people.create_user(
            admin, NewUser(name, f"Person {name}", org.name, [role], PASSWORD)
        )
        actors[name] = actor_for(s, user)
    token = s.gateways.issue_token(actors["hadmin"], hospital.name).token
    gw_id = s.gateways.enroll(token, openssh_public_key(), "gw-1", "1.0").gateway_id
    s.estate.create_instrument(
        admin,
        hospital.name,
        {
            "name": inst.name,
            "host": inst.host,
            "ports": [inst.port],
            "gateway": gw_id,
            "ssh_port": inst.port,
            "login_username": inst.username,
        },
    )
    StoreGatewayDirectory(s).record_inventory(
        gw_id,
        [
            InventoryItem(
                inst.name,
                inst.host,
                (inst.port,),
                "ssh",
                "chemistry",
                "c503",
                True,
                inst.host_key_fingerprint,
            )
        ],
    )
    s.estate.set_credential(
        actors["hadmin"], inst.name, "private_key", inst.client_private_key_pem, inst.username
    )
    s.estate.create_contract(admin, vendor.name, hospital.name, [inst.name])
    s.people.add_key(actors["alice"], public_line)
    uri = s.auth.totp_begin(actors["alice"])
    secret = uri.split("secret=")[1].split("&")[0]
    # enrol with the code of the step before the test's clock: the tests' own codes stay fresh
    s.auth.totp_confirm(actors["alice"], totp.code_at(secret, clock() - _STEP))
    events.clear()
    eng = Engineer(
        actors["alice"].user_id,
        "alice",
        vendor.name,
        roles=frozenset({"engineer"}),
        org_kind="vendor",
    )
    return StorePolicy(s, store, actors), eng, secret
