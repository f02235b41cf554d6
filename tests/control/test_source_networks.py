"""The one source-network rule (``broker.access.names.source_allowed``), used by HTTP
sign-in and by the SSH front door alike."""

from __future__ import annotations

import pytest

from broker.access.names import source_allowed


@pytest.mark.parametrize(
    ("allowed", "src", "ok"),
    [
        ([], None, True),  # no list: any source
        ((), "203.0.113.9", True),
        (["203.0.113.0/24"], "203.0.113.9", True),
        (("203.0.113.0/24",), "198.51.100.1", False),
        (["203.0.113.0/24"], None, False),  # unknown source: refused
        (["203.0.113.0/24"], "", False),
        (["203.0.113.0/24"], "not-an-ip", False),
        (["203.0.113.0/24"], "::ffff:203.0.113.9", True),  # IPv4-mapped counts as IPv4
        (["2001:db8::/32"], "2001:db8::1", True),
        (["2001:db8::/32"], "203.0.113.9", False),
        (["203.0.113.9/24"], "203.0.113.1", True),  # host bits set: still its network
        (["bogus"], "203.0.113.9", False),  # malformed network: refused
        (["203.0.113.0/24", "bogus"], "203.0.113.9", False),
    ],
)
def test_source_allowed(allowed: list[str], src: str | None, ok: bool) -> None:
    assert source_allowed(allowed, src) is ok


def test_the_front_door_uses_the_same_rule() -> None:
    from broker.frontdoor import auth

    assert auth.source_allowed is source_allowed
