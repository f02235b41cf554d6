"""Name rules shared by the services (DNS-style slugs for hosts, orgs and people)."""

from __future__ import annotations

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
