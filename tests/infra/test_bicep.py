"""The Bicep tree parses, hangs together, and keeps the hard rules:
no public endpoints, diagnostic settings on everything, parameters that match."""

from __future__ import annotations

import json
import re
from collections.abc import Sized
from pathlib import Path
from typing import Any

import pytest

from tests.infra.bicep import (
    BICEP_DIR,
    MODULES_DIR,
    bicep_files,
    function_calls,
    parse,
    resource_type,
    resources,
    scope_name,
    strip_quotes,
    walk,
)

MAIN = BICEP_DIR / "main.bicep"
PARAMETERS = BICEP_DIR / "main.parameters.json"

# Resource types that need no diagnostic setting of their own, and why.
NO_DIAGNOSTICS = {
    "Microsoft.Insights/diagnosticSettings": "is the diagnostic setting",
    "Microsoft.Authorization/roleAssignments": "logged in the Azure activity log",
    "Microsoft.ManagedIdentity/userAssignedIdentities": (
        "no log categories; sign-ins go to Entra ID logs"
    ),
    "Microsoft.Network/routeTables": "no log categories; changes go to the activity log",
    "Microsoft.Network/privateEndpoints": (
        "no log categories; traffic is logged by the service behind it"
    ),
    "Microsoft.Network/privateEndpoints/privateDnsZoneGroups": "child configuration",
    "Microsoft.Network/privateDnsZones": "no log categories",
    "Microsoft.Network/privateDnsZones/A": "child record",
    "Microsoft.Network/privateDnsZones/virtualNetworkLinks": "child configuration",
    "Microsoft.Network/virtualNetworks/virtualNetworkPeerings": "child of a logged network",
    "Microsoft.Network/firewallPolicies": "its firewall is logged (rule hits, IDPS, threat intel)",
    "Microsoft.Network/firewallPolicies/ruleCollectionGroups": "child of the policy",
    "Microsoft.Insights/privateLinkScopes": "no log categories",
    "Microsoft.Insights/privateLinkScopes/scopedResources": "child configuration",
    "Microsoft.Insights/dataCollectionEndpoints": "no log categories; the rule behind it is logged",
    "Microsoft.OperationalInsights/workspaces/tables": "part of the workspace",
    "Microsoft.SecurityInsights/onboardingStates": "Sentinel's own audit goes to the workspace",
    "Microsoft.SecurityInsights/alertRules": "Sentinel health and audit tables",
    "Microsoft.KeyVault/vaults/keys": "key use is in the vault's AuditEvent log",
    "Microsoft.Storage/storageAccounts/blobServices/containers": "logged by the blob service",
    "Microsoft.DBforPostgreSQL/flexibleServers/administrators": "child of the logged server",
    "Microsoft.DBforPostgreSQL/flexibleServers/configurations": "child of the logged server",
    "Microsoft.DBforPostgreSQL/flexibleServers/databases": "child of the logged server",
}


def _type_name(resource: dict[str, Any]) -> str:
    return resource_type(resource).split("@", 1)[0]


@pytest.mark.parametrize("path", bicep_files(), ids=lambda p: str(p.relative_to(BICEP_DIR)))
def test_every_bicep_file_parses(path: Path) -> None:
    """pycep-parser reads every .bicep file and finds at least one declaration in it."""
    parsed = parse(path)
    declared = sum(len(parsed.get(k) or {}) for k in ("parameters", "resources", "modules"))
    assert declared > 0, f"{path}: nothing declared"


def test_the_tree_has_the_expected_pieces() -> None:
    """main.bicep deploys hub, spoke, firewall, ExpressRoute, broker, data, keys and Sentinel."""
    types = {_type_name(r) for p in bicep_files() for r in resources(p).values()}
    for required in (
        "Microsoft.Network/azureFirewalls",
        "Microsoft.Network/firewallPolicies",
        "Microsoft.Network/virtualNetworkGateways",
        "Microsoft.Network/connections",
        "Microsoft.App/managedEnvironments",
        "Microsoft.App/containerApps",
        "Microsoft.ManagedIdentity/userAssignedIdentities",
        "Microsoft.DBforPostgreSQL/flexibleServers",
        "Microsoft.KeyVault/vaults",
        "Microsoft.Storage/storageAccounts",
        "Microsoft.OperationalInsights/workspaces",
        "Microsoft.OperationalInsights/workspaces/tables",
        "Microsoft.SecurityInsights/onboardingStates",
        "Microsoft.SecurityInsights/alertRules",
        "Microsoft.Insights/dataCollectionEndpoints",
        "Microsoft.Insights/dataCollectionRules",
        "Microsoft.Network/privateEndpoints",
    ):
        assert required in types, f"{required} is not deployed"


def test_every_module_reference_points_at_a_file() -> None:
    for path in bicep_files():
        for name, module in (parse(path).get("modules") or {}).items():
            target = (path.parent / module["detail"]["path"]).resolve()
            assert target.is_file(), f"{path.name}: module {name} -> {target} missing"


def test_every_module_is_used() -> None:
    used = {
        (p.parent / m["detail"]["path"]).resolve()
        for p in bicep_files()
        for m in (parse(p).get("modules") or {}).values()
    }
    for path in MODULES_DIR.glob("*.bicep"):
        assert path.resolve() in used, f"{path.name} is not referenced by any module"


def test_loaded_files_exist() -> None:
    """Every loadJsonContent/loadTextContent path resolves to a file in the repository."""
    count = 0
    for path in bicep_files():
        parsed = parse(path)
        for kind in ("load_json_content", "load_text_content"):
            for call in function_calls(parsed, kind):
                target = path.parent / strip_quotes(call["parameters"]["file_path"])
                assert target.is_file(), f"{path.name}: {target} missing"
                count += 1
    assert count >= 8  # the table (twice) and six rule queries


def test_no_service_allows_public_network_access() -> None:
    """No resource sets publicNetworkAccess (or its Log Analytics variants) to Enabled."""
    offenders = []
    for path in bicep_files():
        text = path.read_text()
        for m in re.finditer(r"(publicNetworkAccess\w*)\s*:\s*'(\w+)'", text):
            if m.group(2) != "Disabled":
                offenders.append(f"{path.name}: {m.group(0)}")
    assert offenders == []


def test_private_services_are_private() -> None:
    """Vault, storage, registry, database, DCE and workspace ingestion are private."""
    text = {p.name: p.read_text() for p in bicep_files()}
    assert "publicNetworkAccess: 'Disabled'" in text["keyvault.bicep"]
    assert "publicNetworkAccess: 'Disabled'" in text["storage.bicep"]
    assert "allowSharedKeyAccess: false" in text["storage.bicep"]
    assert "publicNetworkAccess: 'Disabled'" in text["registry.bicep"]
    assert "publicNetworkAccess: 'Disabled'" in text["postgres.bicep"]
    assert "delegatedSubnetResourceId" in text["postgres.bicep"]
    assert "publicNetworkAccess: 'Disabled'" in text["monitoring.bicep"]
    assert "ingestionAccessMode: 'PrivateOnly'" in text["monitoring.bicep"]
    assert "publicNetworkAccessForIngestion: 'Disabled'" in text["workspace.bicep"]
    assert "internal: true" in text["containerapps.bicep"]


def test_security_settings_of_the_core_services() -> None:
    """IDPS deny, zone-redundant HA, Entra-only database, vault RBAC + purge protection, WORM."""
    text = {p.name: p.read_text() for p in bicep_files()}
    fw = text["firewall.bicep"]
    assert re.search(r"intrusionDetection:\s*\{\s*mode: 'Deny'", fw)
    assert "tier: 'Premium'" in fw and "threatIntelMode: 'Deny'" in fw
    pg = text["postgres.bicep"]
    assert "mode: 'ZoneRedundant'" in pg
    assert "activeDirectoryAuth: 'Enabled'" in pg and "passwordAuth: 'Disabled'" in pg
    kv = text["keyvault.bicep"]
    for setting in (
        "enableRbacAuthorization: true",
        "enablePurgeProtection: true",
        "enableSoftDelete: true",
    ):
        assert setting in kv
    st = text["storage.bicep"]
    assert re.search(
        r"immutableStorageWithVersioning:\s*\{\s*enabled: true\s*immutabilityPolicy", st
    )
    assert "immutabilityPeriodSinceCreationInDays: retentionDays" in st
    assert "state: lockRetentionPolicy ? 'Locked' : 'Unlocked'" in st
    er = text["expressroute.bicep"]
    assert "gatewayType: 'ExpressRoute'" in er and "connectionType: 'ExpressRoute'" in er
    assert "id: circuitId" in er


def test_diagnostic_settings_on_everything() -> None:
    """Each deployed resource sends its logs and metrics to Log Analytics, or is listed as
    having nothing to send (NO_DIAGNOSTICS, each with its reason)."""
    missing = []
    for path in bicep_files():
        res = resources(path)
        scoped = {
            scope_name(r)
            for r in res.values()
            if _type_name(r) == "Microsoft.Insights/diagnosticSettings"
        }
        for name, r in res.items():
            if r.get("existing"):
                continue
            if _type_name(r) in NO_DIAGNOSTICS:
                continue
            if name not in scoped:
                missing.append(f"{path.name}: {name} ({_type_name(r)})")
    assert missing == []


def test_diagnostic_settings_target_the_workspace() -> None:
    for path in bicep_files():
        for r in resources(path).values():
            if _type_name(r) != "Microsoft.Insights/diagnosticSettings":
                continue
            props = r["config"]["properties"]
            assert "workspaceId" in props
            logs = props.get("logs") or []
            metrics = props.get("metrics") or []
            assert logs or metrics


def test_parameters_file_matches_main() -> None:
    """Every value in main.parameters.json is a parameter of main.bicep, and every
    required parameter (no default) has a value, except secure ones (passed at deploy)."""
    declared = parse(MAIN)["parameters"]
    values = json.loads(PARAMETERS.read_text())["parameters"]
    assert set(values) <= set(declared), set(values) - set(declared)
    for name, param in declared.items():
        secure = any(d["type"] == "secure" for d in param.get("decorators", []))
        if param.get("default") is None and not secure:
            assert name in values, f"required parameter {name} has no value"
        if secure:
            assert name not in values, f"secure parameter {name} must not be in the file"


def test_firewall_address_matches_its_subnet() -> None:
    """The firewall's private address (used by the route tables) is the 4th of its subnet."""
    import ipaddress

    values = json.loads(PARAMETERS.read_text())["parameters"]
    subnet = ipaddress.ip_network(values["subnetPrefixes"]["value"]["firewall"])
    assert ipaddress.ip_address(values["firewallPrivateIp"]["value"]) == subnet[4]
    # The address plan is IPv4 throughout; IPv4Network refuses anything else.
    hub = ipaddress.IPv4Network(values["hubAddressPrefix"]["value"])
    spoke = ipaddress.IPv4Network(values["spokeAddressPrefix"]["value"])
    subnets = values["subnetPrefixes"]["value"]
    for key in ("firewall", "gateway"):
        assert ipaddress.IPv4Network(subnets[key]).subnet_of(hub)
    for key in ("apps", "postgres", "endpoints"):
        assert ipaddress.IPv4Network(subnets[key]).subnet_of(spoke)
    nets = [ipaddress.ip_network(v) for v in subnets.values()]
    for i, a in enumerate(nets):
        for b in nets[i + 1 :]:
            assert not a.overlaps(b), (a, b)


def test_secure_parameters_have_no_default() -> None:
    for path in bicep_files():
        for name, param in (parse(path).get("parameters") or {}).items():
            if any(d["type"] == "secure" for d in param.get("decorators", [])):
                assert param.get("default") is None, f"{path.name}: {name}"


def test_no_secrets_or_keys_in_templates() -> None:
    """Nothing in the templates calls listKeys or embeds connection strings."""
    for path in bicep_files():
        text = path.read_text()
        assert "listKeys" not in text and "AccountKey=" not in text, path.name
        assert not any(isinstance(n, str) and n.startswith("list") for n in walk(parse(path))), (
            path.name
        )


# The only roles the templates hand out, all to the broker's identity, each on one resource.
ALLOWED_ROLES = {
    "3913510d-42f4-4e42-8a64-420c390055eb": "Monitoring Metrics Publisher (DCR)",
    "12338af0-0e69-4776-bea7-57ae8d297424": "Key Vault Crypto User",
    "4633458b-17de-408a-b874-0445c86b69e6": "Key Vault Secrets User",
    "ba92f5b4-2d11-453d-a403-e96b0029c9fe": "Storage Blob Data Contributor (recordings)",
    "7f951dda-4ed3-4680-a7ca-43fe172d538d": "AcrPull",
}


def test_role_assignments_are_least_privilege() -> None:
    """Every role assignment gives the broker identity a narrow data-plane role on one
    resource: no Owner/Contributor, nothing at resource-group scope."""
    found = 0
    for path in bicep_files():
        parsed = parse(path)
        variables = parsed.get("variables") or {}
        for name, r in resources(path).items():
            if _type_name(r) != "Microsoft.Authorization/roleAssignments":
                continue
            found += 1
            props = r["config"]["properties"]
            assert props["principalId"] == "brokerPrincipalId", (path.name, name)
            assert props["principalType"] == "ServicePrincipal", (path.name, name)
            assert scope_name(r) in resources(path), f"{path.name}: {name} has no resource scope"
            (call,) = function_calls(props["roleDefinitionId"], "subscription_resource_id")
            role_var = call["parameters"]["resource_name_1"]
            role_id = strip_quotes(str(variables[role_var]["value"]))
            assert role_id in ALLOWED_ROLES, f"{path.name}: {name} assigns role {role_id}"
    assert found == len(ALLOWED_ROLES)


def _module_calls() -> list[tuple[Path, str, dict[str, Any], Path]]:
    calls = []
    for path in bicep_files():
        for name, module in (parse(path).get("modules") or {}).items():
            calls.append((path, name, module, (path.parent / module["detail"]["path"]).resolve()))
    return calls


def _module_body(module: dict[str, Any]) -> dict[str, Any]:
    """The object of a module declaration, also when it is conditional or a loop."""
    config: dict[str, Any] = module["config"]
    if "condition" in config and "config" in config:  # `= if (cond) { ... }`
        inner: dict[str, Any] = config["config"]
        return inner
    return config


def test_modules_get_exactly_the_parameters_they_declare() -> None:
    """What the Bicep compiler would check: no unknown parameter is passed to a
    module, and every parameter without a default is passed."""
    for path, name, module, target in _module_calls():
        declared = parse(target).get("parameters") or {}
        passed = set(_module_body(module).get("params") or {})
        unknown = passed - set(declared)
        assert not unknown, f"{path.name}: module {name} gets unknown params {unknown}"
        required = {p for p, d in declared.items() if d.get("default") is None}
        missing = required - passed
        assert not missing, f"{path.name}: module {name} lacks required params {missing}"


def test_module_outputs_used_exist() -> None:
    """Every `<module>.outputs.<name>` refers to an output the module declares."""
    for path in bicep_files():
        modules = {
            n: (path.parent / m["detail"]["path"]).resolve()
            for n, m in (parse(path).get("modules") or {}).items()
        }
        for m in re.finditer(r"\b(\w+)\.outputs\.(\w+)", path.read_text()):
            module, output = m.groups()
            assert module in modules, f"{path.name}: {m.group(0)} of an unknown module"
            outputs = parse(modules[module]).get("outputs") or {}
            assert output in outputs, f"{path.name}: {m.group(0)} is not declared"


def test_linter_configuration_makes_the_important_rules_errors() -> None:
    """bicepconfig.json (used by `az bicep lint` in the deploy workflow) turns the rules
    about secrets, hard-coded endpoints and unused declarations into errors."""
    rules = json.loads((BICEP_DIR / "bicepconfig.json").read_text())["analyzers"]["core"]["rules"]
    for rule in (
        "no-unused-params",
        "no-unused-vars",
        "no-hardcoded-env-urls",
        "secure-parameter-default",
        "outputs-should-not-contain-secrets",
        "use-secure-value-for-secure-inputs",
    ):
        assert rules[rule]["level"] == "error", rule


_PYTHON_TYPES: dict[str, type | tuple[type, ...]] = {
    "string": str,
    "int": int,
    "bool": bool,
    "array": list,
    "object": dict,
}


def test_parameter_values_satisfy_their_declarations() -> None:
    """Each value in main.parameters.json has the declared type and meets @allowed,
    @minValue/@maxValue and @minLength/@maxLength, as the deployment would demand."""
    declared = parse(MAIN)["parameters"]
    values = json.loads(PARAMETERS.read_text())["parameters"]
    for name, entry in values.items():
        value, param = entry["value"], declared[name]
        expected = _PYTHON_TYPES[param["type"]]
        assert isinstance(value, expected) and not (
            param["type"] == "int" and isinstance(value, bool)
        ), f"{name}: {value!r}"
        for decorator in param.get("decorators", []):
            kind, arg = decorator["type"], decorator.get("argument")
            if kind == "allowed":
                assert value in arg, f"{name}: {value!r} not in {arg}"
            elif kind == "min_value":
                assert value >= arg, name
            elif kind == "max_value":
                assert value <= arg, name
            elif kind == "min_length":
                assert isinstance(value, Sized) and len(value) >= arg, name
            elif kind == "max_length":
                assert isinstance(value, Sized) and len(value) <= arg, name
    assert re.fullmatch(r"[a-z0-9]{2,10}", values["prefix"]["value"])
