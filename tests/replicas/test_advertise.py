"""The address a replica publishes for its peer link: what the others will dial."""

from __future__ import annotations

import socket

import pytest

from broker.tunnel.peer import PeerSettings


def test_a_named_listen_address_is_published_as_it_is() -> None:
    assert PeerSettings("10.40.4.7", 2224).advertised == "10.40.4.7"


def test_an_advertised_address_wins_over_the_listen_address() -> None:
    assert PeerSettings("0.0.0.0", 2224, "broker-1.internal").advertised == "broker-1.internal"


def test_listening_everywhere_publishes_this_hosts_address_or_refuses_a_loopback() -> None:
    """A container (Azure Container Apps) listens on 0.0.0.0; its host name resolves to
    its own address, which is published.  Where the host name resolves to a loopback
    address (this machine) the replica refuses to start rather than publish an address
    no other replica can reach, and says which setting to give."""
    own = socket.gethostbyname(socket.gethostname())
    if own.startswith("127."):
        with pytest.raises(ValueError, match="HOSHU_ADVERTISE_HOST"):
            _ = PeerSettings("0.0.0.0", 2224).advertised
    else:
        assert PeerSettings("0.0.0.0", 2224).advertised == own
