"""The front door's fixtures (a broker in front of the lab's real sshd), shared here."""

from tests.frontdoor.conftest import (  # noqa: F401  (fixtures)
    front_door_options,
    granted,
    policy_kind,
    world,
)
