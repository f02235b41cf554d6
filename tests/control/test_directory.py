"""The SSH side's view of the control plane: gateway directory and access policy."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from broker.access import totp
from broker.store.db import Store
from broker.store.directory import BATCH, StoreAccessPolicy, StoreGatewayDirectory
from tests.control.conftest import World, enrol_gateway, grant_for, openssh_public_key
from wire.models import InventoryItem


def test_gateway_found_by_enrolled_key_until_revoked(world: World) -> None:
    d = StoreGatewayDirectory(world.s)
    gw_id, key = enrol_gateway(world)
    rec = d.gateway_for_key(key + " comment")
    assert rec is not None and rec.gateway_id == gw_id and rec.hospital_id == world.hospital.id
    assert d.gateway_for_key(openssh_public_key()) is None
    assert d.gateway_for_key("not a key") is None
    world.s.gateways.revoke(world.actors["hadmin"], gw_id)
    assert d.gateway_for_key(key) is None


@contextmanager
def _statements(store: Store) -> Iterator[list[str]]:
    """The SQL statements the store runs inside the block."""
    seen: list[str] = []

    def count(*args: Any) -> None:
        seen.append(str(args[2]))

    sa.event.listen(store.engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", count)


def test_a_sweep_asks_about_every_gateway_in_a_few_queries_with_the_same_answers(
    world: World, store: Store
) -> None:
    """The endpoint's revocation and windows sweeps ask about every tunnel held: a
    query per few hundred gateways, not a transaction each (at 10,000 gateways every
    2 s, that was 5,000 transactions a second)."""
    w = world
    d = StoreGatewayDirectory(w.s)
    enrolled = [enrol_gateway(w, name=f"gw-{i}") for i in range(6)]
    w.s.estate.update_instrument(w.admin, "cobas-1", {"gateway": enrolled[0][0]})
    grant_for(w, ["cobas-1"])
    w.s.gateways.revoke(w.actors["hadmin"], enrolled[5][0])
    keys = [k for _, k in enrolled] + ["not a key", openssh_public_key(), enrolled[1][1]]
    with _statements(store) as seen:
        many = d.gateways_for_keys(keys)
    assert len([q for q in seen if q.lstrip().upper().startswith("SELECT")]) == 2
    assert [r.gateway_id if r else None for r in many] == [
        *(gw for gw, _ in enrolled[:5]),
        None,  # revoked
        None,  # not a key
        None,  # nobody's
        enrolled[1][0],  # asked twice: answered twice
    ]
    assert many == [d.gateway_for_key(k) for k in keys]
    ids = [gw for gw, _ in enrolled] + ["no-such-gateway"]
    with _statements(store) as seen:
        spans = d.windows_for_gateways(ids, w.clock.now)
    assert len([q for q in seen if q.lstrip().upper().startswith("SELECT")]) == 3
    assert spans[0] == [(w.clock.now, w.clock.now + timedelta(hours=1))]
    assert spans[1:] == [[]] * 6  # no instrument of theirs granted; revoked; unknown
    assert spans == [d.windows_for(g, w.clock.now) for g in ids]
    assert BATCH >= 256  # the endpoint's sweep batch fits one query


def test_windows_cover_grants_on_this_gateways_instruments(world: World) -> None:
    w = world
    d = StoreGatewayDirectory(w.s)
    gw_id, _ = enrol_gateway(w)
    assert d.windows_for(gw_id, w.clock.now) == []
    w.s.estate.update_instrument(w.admin, "cobas-1", {"gateway": gw_id})
    grant_for(w, ["cobas-1"])
    [(start, end)] = d.windows_for(gw_id, w.clock.now)
    assert start == w.clock.now and end == w.clock.now + timedelta(hours=1)
    assert d.windows_for(gw_id, end) == []


def test_inventory_host_key_change_blocks_until_an_approver_accepts(world: World) -> None:
    w = world
    d = StoreGatewayDirectory(w.s)
    policy = StoreAccessPolicy(w.s)
    gw_id, _ = enrol_gateway(w)
    item = InventoryItem(
        "cobas-1", "10.0.0.10", (22, 8080), "ssh", "chem", "c503", True, "SHA256:old"
    )
    d.record_inventory(
        gw_id, [item, InventoryItem("new-box", "10.0.0.99", (22,), "ssh", "", "", False, None)]
    )
    w.s.estate.set_credential(w.admin, "cobas-1", "password", "s3cret-instrument-pw", "svc")
    target = policy.instrument("cobas-1")
    assert target is not None and target.host_key_fingerprint == "SHA256:old"
    assert target.credential == "s3cret-instrument-pw" and target.username == "svc"
    assert "s3cret" not in repr(target)
    assert policy.instrument("new-box") is not None  # inventory creates unknown instruments
    grant_for(w, ["cobas-1"])
    uid = w.users["eng"].id
    assert policy.find_grant(uid, "cobas-1", 22, w.clock.now) is not None
    changed = InventoryItem(
        "cobas-1", "10.0.0.10", (22, 8080), "ssh", "chem", "c503", True, "SHA256:new"
    )
    d.record_inventory(gw_id, [changed])
    assert w.s.ctx.emitter.of_type("instrument.key_changed")  # type: ignore[attr-defined]
    assert policy.find_grant(uid, "cobas-1", 22, w.clock.now) is None
    target = policy.instrument("cobas-1")
    assert target is not None and target.host_key_fingerprint is None
    w.s.estate.accept_host_key(w.actors["appr"], "cobas-1", "SHA256:new")
    assert policy.find_grant(uid, "cobas-1", 22, w.clock.now) is not None
    target = policy.instrument("cobas-1")
    assert target is not None and target.host_key_fingerprint == "SHA256:new"


def test_engineer_for_key_needs_active_enrolled_engineer_with_that_key(world: World) -> None:
    w = world
    policy = StoreAccessPolicy(w.s)
    key = openssh_public_key()
    w.s.people.add_key(w.actors["eng"], key + " laptop")
    assert policy.engineer_for_key("eng", key) is None  # TOTP not enrolled yet
    w.enrol_totp("eng")
    eng = policy.engineer_for_key("eng", key)
    assert eng is not None and eng.user_id == w.users["eng"].id
    assert eng.organization == "acme-labs"
    assert policy.engineer_for_key("eng2", key) is None
    assert policy.engineer_for_key("eng", openssh_public_key()) is None
    w.s.people.deactivate(w.admin, "eng")
    assert policy.engineer_for_key("eng", key) is None


def test_find_grant_checks_instrument_port_time_and_person(world: World) -> None:
    w = world
    policy = StoreAccessPolicy(w.s)
    gid = grant_for(w, ["cobas-1"], [22, 8080])
    uid = w.users["eng"].id
    now = w.clock.now
    g = policy.find_grant(uid, "cobas-1", 8080, now)
    assert g is not None and g.grant_id == gid and g.ports == (22, 8080)
    assert policy.find_grant(uid, "cobas-1", 443, now) is None
    assert policy.find_grant(uid, "las-line-a", 22, now) is None
    assert policy.find_grant(w.users["eng2"].id, "cobas-1", 22, now) is None
    assert policy.find_grant(uid, "cobas-1", 22, now + timedelta(hours=1)) is None
    assert policy.grant_end(gid, uid, now).ends == now + timedelta(hours=1)
    assert policy.grant_end(gid, w.users["eng2"].id, now).ends is None


def test_grant_end_is_none_after_revocation_or_deactivation(world: World) -> None:
    w = world
    policy = StoreAccessPolicy(w.s)
    gid = grant_for(w, ["cobas-1"])
    uid = w.users["eng"].id
    w.s.grants.revoke(w.actors["appr"], gid)
    assert policy.grant_end(gid, uid, w.clock.now).why == "grant_revoked"
    gid2 = grant_for(w, ["cobas-1"])
    w.s.people.deactivate(w.admin, "eng")
    assert policy.grant_end(gid2, uid, w.clock.now).why == "engineer_inactive"
    assert policy.find_grant(uid, "cobas-1", 22, w.clock.now) is None


def test_check_totp_through_the_policy(world: World) -> None:
    w = world
    secret = w.enrol_totp("eng")
    policy = StoreAccessPolicy(w.s)
    uid = w.users["eng"].id
    code = totp.code_at(secret, w.clock.now)
    assert policy.check_totp(uid, code, w.clock.now).ok
    r = policy.check_totp(uid, code, w.clock.now)
    assert not r.ok and r.reason == "replayed" and r.failures == 1


def test_ending_the_contract_ends_the_grant_at_the_front_door(world: World) -> None:
    w = world
    policy = StoreAccessPolicy(w.s)
    gid = grant_for(w, ["cobas-1"])
    uid = w.users["eng"].id
    assert policy.grant_end(gid, uid, w.clock.now).ends is not None
    contract = next(c for c in w.s.estate.list_contracts(w.admin) if c.hospital_id == w.hospital.id)
    w.s.estate.end_contract(w.actors["hadmin"], contract.id)
    assert policy.find_grant(uid, "cobas-1", 22, w.clock.now) is None
    assert policy.grant_end(gid, uid, w.clock.now).why == "contract_ended"


def test_certificate_lifetime_follows_the_same_live_grant_rule_as_the_front_door(
    world: World,
) -> None:
    """The certificate issuer's "until when do your grants last" counts a grant only
    while the front door would let it in: no certificate time on a grant whose
    contract has ended or whose engineer is deactivated."""
    from broker.assembly import store_grants_end

    w = world
    grants_end = store_grants_end(w.s)
    uid = w.users["eng"].id
    assert grants_end(uid, w.clock.now) is None
    grant_for(w, ["cobas-1"])
    assert grants_end(uid, w.clock.now) == w.clock.now + timedelta(hours=1)
    contract = next(c for c in w.s.estate.list_contracts(w.admin) if c.hospital_id == w.hospital.id)
    w.s.estate.end_contract(w.actors["hadmin"], contract.id)
    assert StoreAccessPolicy(w.s).find_grant(uid, "cobas-1", 22, w.clock.now) is None
    assert grants_end(uid, w.clock.now) is None


def test_no_certificate_time_for_a_deactivated_engineer(world: World) -> None:
    from broker.assembly import store_grants_end

    w = world
    grant_for(w, ["cobas-1"])
    uid = w.users["eng"].id
    assert store_grants_end(w.s)(uid, w.clock.now) is not None
    w.s.people.deactivate(w.admin, "eng")
    assert store_grants_end(w.s)(uid, w.clock.now) is None
