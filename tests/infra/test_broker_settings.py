"""The container app's environment is settings the broker reads and accepts, and the
identity it signs in as has what those settings need: a PostgreSQL Entra principal
named as the database URL's user, Key Vault roles, and write access to the WORM
recordings container the recordings URL names."""

from __future__ import annotations

import json
import os
import re
import uuid
from typing import Any

import pytest

from broker.settings import BrokerSettings
from tests.infra.bicep import (
    BICEP_DIR,
    MODULES_DIR,
    function_calls,
    parse,
    property_access,
    resource_type,
    resources,
    scope_name,
    strip_quotes,
)

APPS = MODULES_DIR / "containerapps.bicep"
CLIENT_ID = str(uuid.uuid4())
# What the parameters of containerapps.bicep look like once deployed.
SAMPLE = {
    "identityClientId": CLIENT_ID,
    "identityName": "id-hoshu-broker",
    "postgresFqdn": "psql-hoshu.postgres.database.azure.com",
    "postgresDatabase": "hoshu",
    "prefix": "hoshu",
    "keyVaultUri": "https://kv-hoshu.vault.azure.net/",
    "recordingsUrl": "https://sthoshu.blob.core.windows.net/recordings",
    "logsIngestionEndpoint": "https://dce-hoshu-abcd.japaneast-1.ingest.monitor.azure.com",
    "dcrImmutableId": "dcr-00000000000000000000000000000000",
    "dcrStreamName": "Custom-HoshuAudit",
    "drainGraceSeconds": 20,
    "drainLeadSeconds": 10,
    "ingressAddressPrefix": "10.40.4.0/23",
}


def _env() -> list[dict[str, Any]]:
    broker = resources(APPS)["broker"]
    env: list[dict[str, Any]] = broker["config"]["properties"]["template"]["containers"][0]["env"]
    return env


def _value(node: Any, params: set[str]) -> str:
    """A deployed value: a parameter's sample, an interpolated string, or string(x)."""
    if isinstance(node, dict):
        (call,) = function_calls(node, "string")
        arg = call["parameters"]["value_to_convert"]
        if isinstance(arg, list):
            return json.dumps([SAMPLE[a] for a in arg])
        return str(SAMPLE[arg])
    text = str(node)
    if text in params:
        return str(SAMPLE[text])
    return re.sub(r"\$\{([^}]+)\}", lambda m: str(SAMPLE.get(m.group(1), "x")), text)


def test_every_variable_of_the_container_is_a_setting() -> None:
    names = [e["name"] for e in _env()]
    assert len(names) == len(set(names))
    settings = BrokerSettings.field_variables()
    assert [n for n in names if n != "AZURE_CLIENT_ID" and n not in settings] == []


def test_the_deployed_environment_is_accepted_by_the_broker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The values the container gets, with deployed-looking parameters, pass the
    broker's start-up checks (no unknown variable, Entra sign-in without a password,
    HTTPS endpoints, a GUID client id) and say what the Azure broker needs."""
    params = set(parse(APPS)["parameters"])
    env = {e["name"]: _value(e["value"], params) for e in _env()}
    for k in list(os.environ):
        if k.upper().startswith("HOSHU_"):
            monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = BrokerSettings.from_env()
    assert env["AZURE_CLIENT_ID"] == s.azure_client_id == CLIENT_ID
    assert s.database_auth == "entra"
    assert s.database_url.startswith("postgresql://id-hoshu-broker@psql-hoshu.")
    assert s.database_url.endswith("?sslmode=require")
    assert s.audit_store == "postgres"
    assert s.key_vault_url == "https://kv-hoshu.vault.azure.net"
    assert s.recordings_url == SAMPLE["recordingsUrl"]
    assert s.trusted_proxies == ["10.40.4.0/23"]
    assert s.drain_grace_s == 20
    assert s.drain_lead_s == 10
    assert s.peer_port == 2224 and s.peer_host == "0.0.0.0"


def test_the_platform_waits_longer_than_the_drain() -> None:
    template = resources(APPS)["broker"]["config"]["properties"]["template"]
    grace = template["terminationGracePeriodSeconds"]
    assert "drainGraceSeconds" in json.dumps(grace) and "10" in json.dumps(grace)


def _main_module_params(module: str) -> dict[str, Any]:
    config = parse(BICEP_DIR / "main.bicep")["modules"][module]["config"]
    body = config.get("config", config) if "condition" in config else config
    params: dict[str, Any] = body["params"]
    return params


def test_the_database_user_is_the_identitys_entra_principal() -> None:
    """main.bicep names the same identity as the URL's user and as the server's
    Entra principal (a service principal, keyed by its object id)."""
    apps = _main_module_params("containerApps")
    pg = _main_module_params("postgres")
    assert property_access(apps["identityName"]) == property_access(pg["brokerIdentityName"])
    assert property_access(apps["identityName"]) == ("brokerIdentity", "name")
    operands = pg["brokerPrincipalId"]["operator"]["operands"]
    assert operands["operand_1"] == "brokerIdentity"
    assert property_access(operands["operand_2"]) == ("properties", "principalId")
    principal = resources(MODULES_DIR / "postgres.bicep")["brokerPrincipal"]["config"]
    assert principal["name"] == "brokerPrincipalId"
    props = principal["properties"]
    assert strip_quotes(props["principalType"]) == "ServicePrincipal"
    assert props["principalName"] == "brokerIdentityName"
    server = resources(MODULES_DIR / "postgres.bicep")["server"]["config"]["properties"]
    assert strip_quotes(server["authConfig"]["passwordAuth"]) == "Disabled"


def test_the_recordings_url_is_the_worm_container_the_identity_writes_to() -> None:
    storage = MODULES_DIR / "storage.bicep"
    outputs = parse(storage)["outputs"]
    assert "recordings.name" in json.dumps(outputs["recordingsUrl"])
    res = resources(storage)
    container = res["recordings"]["config"]["properties"]
    assert container["immutableStorageWithVersioning"]["enabled"] in (True, "true")
    writes = [
        r
        for r in res.values()
        if resource_type(r).split("@")[0] == "Microsoft.Authorization/roleAssignments"
        and scope_name(r) == "recordings"
    ]
    assert len(writes) == 1, "one role assignment, on the recordings container"
    assert writes[0]["config"]["properties"]["principalId"] == "brokerPrincipalId"
    assert "recordingsUrl" in json.dumps(_main_module_params("containerApps")["recordingsUrl"])


def test_the_identity_can_use_the_key_vault_keys_and_secrets() -> None:
    vault = MODULES_DIR / "keyvault.bicep"
    variables = parse(vault)["variables"]
    roles = set()
    for r in resources(vault).values():
        props = r["config"].get("properties") or {}
        if props.get("principalId") == "brokerPrincipalId":
            (call,) = function_calls(props["roleDefinitionId"], "subscription_resource_id")
            roles.add(strip_quotes(str(variables[call["parameters"]["resource_name_1"]]["value"])))
    assert roles == {
        "12338af0-0e69-4776-bea7-57ae8d297424",  # Key Vault Crypto User
        "4633458b-17de-408a-b874-0445c86b69e6",
    }  # Key Vault Secrets User


def test_the_deployment_guide_lists_every_variable_the_container_gets() -> None:
    """docs/deploy-azure.md's settings table names each variable the container app
    sets, so an operator running the broker elsewhere sets the same ones."""
    guide = (BICEP_DIR.parents[1] / "docs" / "deploy-azure.md").read_text()
    rows = {
        m
        for line in guide.splitlines()
        if line.lstrip().startswith("| `")
        for m in re.findall(r"`((?:HOSHU|AZURE)_[A-Z0-9_]+)`", line.split("|")[1])
    }
    assert {e["name"] for e in _env()} - rows == set()
