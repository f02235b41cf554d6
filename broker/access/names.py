"""Name rules shared by the services (DNS-style slugs for hosts, orgs and people).

The patterns themselves are defined once in :mod:`wire.names` (the gateway
checks its configuration with the same ones); here they become domain errors.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from broker.access.errors import InvalidInput
from wire.names import NAME_PATTERN as SLUG
from wire.names import USERNAME_PATTERN as USERNAME
from wire.names import valid_name, valid_username

__all__ = ["SLUG", "USERNAME", "networks", "slug", "source_allowed", "source_bucket", "username"]

IPV6_BUCKET_PREFIX = 64  # one IPv6 subscriber gets a /64: throttle it as one source


def slug(value: str, what: str) -> str:
    if not valid_name(value):
        raise InvalidInput(
            f"{what} must be lower-case letters, digits and '-' (1-63), not {value!r}",
            code="invalid_name",
        )
    return value


def username(value: str) -> str:
    if not valid_username(value):
        raise InvalidInput(
            f"user name must be lower-case letters, digits, '.', '_' or '-' (1-63), not {value!r}",
            code="invalid_name",
        )
    return value


def networks(values: list[str]) -> list[str]:
    """Normalise source networks (``203.0.113.0/24``, ``2001:db8::/32``, one address)."""
    out = []
    for v in values:
        try:
            out.append(str(ipaddress.ip_network(v.strip(), strict=False)))
        except ValueError as exc:
            raise InvalidInput(f"{v!r} is not an IP network", code="invalid_network") from exc
    return sorted(set(out))


def source_allowed(allowed: Sequence[str], src_ip: str | None) -> bool:
    """Whether a caller at ``src_ip`` may come in from one of the ``allowed`` networks.

    The one rule for HTTP sign-in and the SSH front door. No list: any source. A list:
    only addresses inside it; an IPv4-mapped IPv6 address counts as its IPv4 address.
    An unknown or malformed address, or a malformed network in the list, denies
    (fail closed).
    """
    if not allowed:
        return True
    if not src_ip:
        return False
    try:
        addr = ipaddress.ip_address(src_ip)
        nets = [ipaddress.ip_network(n, strict=False) for n in allowed]
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr in net for net in nets)


def source_bucket(src_ip: str | None) -> str | None:
    """The throttling bucket of a caller address: the IPv4 address itself, or the
    IPv6 /64 it is in (an IPv4-mapped IPv6 address counts as its IPv4 address).
    No address: no bucket (sign-in is then throttled per account only)."""
    if not src_ip:
        return None
    try:
        addr = ipaddress.ip_address(src_ip)
    except ValueError:
        return f"ip:{src_ip[:64]}"
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return f"ip:{addr.ipv4_mapped}"
        net = ipaddress.ip_network(f"{addr}/{IPV6_BUCKET_PREFIX}", strict=False)
        return f"ip:{net}"
    return f"ip:{addr}"
