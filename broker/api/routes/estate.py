"""Contracts, hospital policies and instruments (credentials are write-only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from broker.access.model import Instrument
from broker.access.ports import Actor
from broker.api import schemas as s
from broker.api.deps import ServicesDep, require

router = APIRouter(prefix="/v1", tags=["estate"])


def instrument_out(i: Instrument) -> s.InstrumentOut:
    return s.InstrumentOut(
        id=i.id,
        hospital_id=i.hospital_id,
        gateway_id=i.gateway_id,
        name=i.name,
        host=i.host,
        ssh_port=i.ssh_port,
        ports=i.ports,
        protocol=i.protocol,
        keyboard_layout=i.keyboard_layout,
        department=i.department,
        model=i.model,
        vendor=i.vendor,
        criticality=i.criticality,
        login_username=i.login_username,
        credential_set=bool(i.credential_enc),
        credential_kind=i.credential_kind,
        host_key_fingerprint=i.host_key_fingerprint,
        pending_host_key_fingerprint=i.pending_host_key_fingerprint,
        reachable=i.reachable,
        last_seen_at=i.last_seen_at,
        active=i.active,
    )


@router.get("/contracts", response_model=list[s.ContractOut])
def list_contracts(
    services: ServicesDep, actor: Annotated[Actor, Depends(require("contracts.list"))]
) -> list[s.ContractOut]:
    return [s.ContractOut.model_validate(c) for c in services.estate.list_contracts(actor)]


@router.post("/contracts", response_model=s.ContractOut, status_code=201)
def create_contract(
    body: s.ContractIn,
    services: ServicesDep,
    actor: Annotated[Actor, Depends(require("contracts.create"))],
) -> s.ContractOut:
    return s.ContractOut.model_validate(
        services.estate.create_contract(
            actor, body.vendor, body.hospital, body.instruments, body.valid_until, body.reference
        )
    )


@router.post("/contracts/{contract_id}/end", response_model=s.ContractOut)
def end_contract(
    contract_id: str,
    services: ServicesDep,
    actor: Annotated[Actor, Depends(require("contracts.end"))],
) -> s.ContractOut:
    return s.ContractOut.model_validate(services.estate.end_contract(actor, contract_id))


@router.get("/policies/{hospital}", response_model=s.PolicyOut)
def show_policy(
    hospital: str, services: ServicesDep, actor: Annotated[Actor, Depends(require("policies.show"))]
) -> s.PolicyOut:
    return s.PolicyOut.model_validate(services.estate.show_policy(actor, hospital))


@router.patch("/policies/{hospital}", response_model=s.PolicyOut)
def update_policy(
    hospital: str,
    body: s.PolicyPatch,
    services: ServicesDep,
    actor: Annotated[Actor, Depends(require("policies.update"))],
) -> s.PolicyOut:
    return s.PolicyOut.model_validate(
        services.estate.update_policy(actor, hospital, body.changes())
    )


@router.get("/instruments", response_model=list[s.InstrumentOut])
def list_instruments(
    services: ServicesDep, actor: Annotated[Actor, Depends(require("instruments.list"))]
) -> list[s.InstrumentOut]:
    return [instrument_out(i) for i in services.estate.list_instruments(actor)]


@router.post("/instruments", response_model=s.InstrumentOut, status_code=201)
def create_instrument(
    body: s.InstrumentIn,
    services: ServicesDep,
    actor: Annotated[Actor, Depends(require("instruments.create"))],
) -> s.InstrumentOut:
    values = body.changes()
    hospital = values.pop("hospital", None)
    return instrument_out(services.estate.create_instrument(actor, hospital, values))


@router.get("/instruments/{name}", response_model=s.InstrumentOut)
def show_instrument(
    name: str, services: ServicesDep, actor: Annotated[Actor, Depends(require("instruments.show"))]
) -> s.InstrumentOut:
    return instrument_out(services.estate.show_instrument(actor, name))


@router.patch("/instruments/{name}", response_model=s.InstrumentOut)
def update_instrument(
    name: str,
    body: s.InstrumentPatch,
    services: ServicesDep,
    actor: Annotated[Actor, Depends(require("instruments.update"))],
) -> s.InstrumentOut:
    return instrument_out(services.estate.update_instrument(actor, name, body.changes()))


@router.put("/instruments/{name}/credential", response_model=s.InstrumentOut)
def set_credential(
    name: str,
    body: s.CredentialIn,
    services: ServicesDep,
    actor: Annotated[Actor, Depends(require("instruments.credential"))],
) -> s.InstrumentOut:
    """Write-only: the credential is sealed and never returned by any endpoint."""
    return instrument_out(
        services.estate.set_credential(actor, name, body.kind, body.secret, body.username)
    )


@router.post("/instruments/{name}/accept-host-key", response_model=s.InstrumentOut)
def accept_host_key(
    name: str,
    body: s.AcceptKeyIn,
    services: ServicesDep,
    actor: Annotated[Actor, Depends(require("instruments.accept_host_key"))],
) -> s.InstrumentOut:
    return instrument_out(services.estate.accept_host_key(actor, name, body.fingerprint))
