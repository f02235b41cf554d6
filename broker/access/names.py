"""Name rules shared by the services (DNS-style slugs for hosts, orgs and people)."""

from __future__ import annotations

import ipaddress
import re

from broker.access.errors import InvalidInput

SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
USERNAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


def slug(value: str, what: str) -> str:
    if not SLUG.match(value):
        raise InvalidInput(f"{what} must be lower-case letters, digits and '-' (1-63), "
                           f"not {value!r}", code="invalid_name")
    return value


def username(value: str) -> str:
    if not USERNAME.match(value):
        raise InvalidInput(f"user name must be lower-case letters, digits, '.', '_' or '-' "
                           f"(1-63), not {value!r}", code="invalid_name")
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


def source_allowed(allowed: list[str], src_ip: str | None) -> bool:
    """No list: any source.  A list: only addresses inside it (unknown source: refused)."""
    if not allowed:
        return True
    if not src_ip:
        return False
    try:
        addr = ipaddress.ip_address(src_ip)
    except ValueError:
        return False
    return any(addr in ipaddress.ip_network(n) for n in allowed)
