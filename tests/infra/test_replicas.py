"""The deployment runs the broker as several replicas: two at least, SSH and tunnels on
the environment's private TCP ingress, the link between replicas on no ingress and
reachable from the apps subnet only, every cluster setting one the broker reads, and a
stop that fails readiness before it drains."""

from __future__ import annotations

import json
from typing import Any

from broker.settings import BrokerSettings
from tests.infra.bicep import BICEP_DIR, MODULES_DIR, parse, property_access, resources

APPS = MODULES_DIR / "containerapps.bicep"
NETWORK = MODULES_DIR / "network.bicep"
MAIN = BICEP_DIR / "main.bicep"
PARAMETERS = BICEP_DIR / "main.parameters.json"


def _min_value(param: dict[str, Any]) -> int:
    [value] = [d["argument"] for d in param.get("decorators", []) if d["type"] == "min_value"]
    return int(value)


def _broker() -> dict[str, Any]:
    props: dict[str, Any] = resources(APPS)["broker"]["config"]["properties"]
    return props


def _env() -> dict[str, Any]:
    container = _broker()["template"]["containers"][0]
    return {e["name"]: e["value"] for e in container["env"]}


def _peer_port() -> int:
    return int(_env()["HOSHU_PEER_PORT"])


def _rules() -> list[dict[str, Any]]:
    nsg = resources(NETWORK)["spokeNsg"]["config"]["properties"]
    return [r["properties"] | {"name": r["name"]} for r in nsg["securityRules"]]


def _covers(rule: dict[str, Any], port: int) -> bool:
    ranges = rule.get("destinationPortRanges") or [rule.get("destinationPortRange")]
    for r in ranges:
        text = str(r)
        if text == "*":
            return True
        lo, _, hi = text.partition("-")
        if int(lo) <= port <= int(hi or lo):
            return True
    return False


def test_at_least_two_replicas_everywhere_the_count_is_set() -> None:
    main = parse(MAIN)["parameters"]
    apps = parse(APPS)["parameters"]
    assert _min_value(main["brokerMinReplicas"]) >= 2
    assert main["brokerMinReplicas"]["default"] >= 2
    assert _min_value(main["brokerMaxReplicas"]) >= 2
    assert _min_value(apps["minReplicas"]) >= 2
    deployed = json.loads(PARAMETERS.read_text())["parameters"]
    assert deployed["brokerMinReplicas"]["value"] >= 2
    assert _broker()["template"]["scale"]["minReplicas"] == "minReplicas"


def test_ssh_and_tunnels_are_tcp_ports_of_the_private_ingress_and_the_peer_port_is_not() -> None:
    """The environment is internal (no public address); engineers' SSH (22 -> 2222) and
    gateways' tunnels (2223) are TCP port mappings of its ingress; the link between
    replicas has no mapping at all."""
    environment = resources(APPS)["environment"]["config"]["properties"]
    assert environment["vnetConfiguration"]["internal"] is True
    ingress = _broker()["configuration"]["ingress"]
    mappings = {m["targetPort"]: m for m in ingress["additionalPortMappings"]}
    env = _env()
    assert mappings[int(env["HOSHU_SSH_PORT"])]["exposedPort"] == 22
    assert mappings[int(env["HOSHU_TUNNEL_PORT"])]["exposedPort"] == 2223
    peer = _peer_port()
    assert peer not in {ingress["targetPort"], *mappings}
    assert peer not in {m.get("exposedPort") for m in mappings.values()}
    assert ingress["ipSecurityRestrictions"] == "allowClients"


def test_only_the_apps_subnet_reaches_the_peer_port() -> None:
    """Every inbound rule that would let something reach the peer port is either the
    apps subnet to itself, or comes after (a higher priority number than) a rule that
    denies the port to everyone."""
    peer = _peer_port()
    inbound = [r for r in _rules() if r["direction"] == "Inbound" and _covers(r, peer)]
    denies = [
        r
        for r in inbound
        if r["access"] == "Deny"
        and r["sourceAddressPrefix"] == "*"
        and r.get("destinationPortRange") == str(peer)
    ]
    assert denies, "no rule denies the peer port to everyone"
    first_deny = min(r["priority"] for r in denies)
    allows = [r for r in inbound if r["access"] == "Allow"]
    apps = ("spokeSubnets", "apps")
    [own] = [
        r
        for r in allows
        if property_access(r.get("sourceAddressPrefix")) == apps
        and property_access(r.get("destinationAddressPrefix")) == apps
        and r.get("destinationPortRange") == str(peer)
    ]
    assert own["priority"] < first_deny
    leaks = [r["name"] for r in allows if r is not own and r["priority"] < first_deny]
    assert leaks == []  # e.g. allow-spoke-internal, allow-azure-load-balancer come later


def test_the_cluster_settings_are_settings_the_broker_reads() -> None:
    """The peer link listens everywhere on the peer port (a replica publishes its own
    address); no fixed replica id or advertised host, which every replica would share:
    each is named after its host name, the platform's replica name."""
    env = _env()
    known = BrokerSettings.field_variables()
    for name in ("HOSHU_PEER_HOST", "HOSHU_PEER_PORT", "HOSHU_DRAIN_LEAD_S"):
        assert name in env and name in known
    assert env["HOSHU_PEER_HOST"] == "0.0.0.0"
    assert 1024 < _peer_port() < 65536
    assert "HOSHU_REPLICA_ID" not in env
    assert "HOSHU_ADVERTISE_HOST" not in env
    assert env["HOSHU_DATABASE_URL"].startswith("postgresql://")  # one database for all
    assert env["HOSHU_AUDIT_STORE"] == "postgres"  # one chain per replica there


def test_a_stop_fails_readiness_long_enough_for_the_probe_before_it_drains() -> None:
    """The lead (/readyz 503 while still serving) lasts at least the readiness probe's
    period times its failure threshold, and the platform's grace covers lead and drain."""
    params = parse(APPS)["parameters"]
    lead = params["drainLeadSeconds"]["default"]
    [ready] = [
        p for p in _broker()["template"]["containers"][0]["probes"] if p["type"] == "Readiness"
    ]
    assert ready["httpGet"]["path"] == "/readyz"
    assert lead >= ready["periodSeconds"] * ready["failureThreshold"]
    grace = json.dumps(_broker()["template"]["terminationGracePeriodSeconds"])
    assert "drainLeadSeconds" in grace and "drainGraceSeconds" in grace
    lead_max = [d["argument"] for d in params["drainLeadSeconds"]["decorators"]]
    grace_max = [d["argument"] for d in params["drainGraceSeconds"]["decorators"]]
    assert (
        max(a for a in lead_max if isinstance(a, int))
        + max(a for a in grace_max if isinstance(a, int))
        + 10
        <= 600
    )  # the platform's own limit for terminationGracePeriodSeconds


def test_a_replicas_peer_key_outlives_a_restart_of_its_container() -> None:
    """The data directory (the peer key pinned under the replica's name) is a volume
    of the replica, so a container restarted in place starts with the same key."""
    template = _broker()["template"]
    [data] = [v for v in template["volumes"] if v["name"] == "data"]
    assert data["storageType"] == "EmptyDir"
    [mount] = template["containers"][0]["volumeMounts"]
    assert (mount["volumeName"], mount["mountPath"]) == ("data", "/var/lib/hoshu")
