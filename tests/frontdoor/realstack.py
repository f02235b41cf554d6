"""The seeded control-plane world wired to a real OpenSSH instrument, for the tests
that run the whole front door against the store's own policy."""

from __future__ import annotations

from pathlib import Path

from broker.store.directory import StoreGatewayDirectory
from labsim.sshd import OpenSSHInstrument
from tests.control.conftest import World, enrol_gateway
from tests.frontdoor.harness import engineer_key
from wire.models import InventoryItem


def instrument_behind_gateway(w: World, inst: OpenSSHInstrument, tmp: Path) -> tuple[Path, str]:
    """cobas-1 at the real sshd ``inst`` behind a newly enrolled gateway that reported
    its host key, with the instrument's login key stored as its credential, and ``eng``
    given an SSH key and TOTP: the engineer's private key file and TOTP secret."""
    gw_id, _ = enrol_gateway(w)
    w.s.estate.update_instrument(
        w.admin,
        "cobas-1",
        {
            "gateway": gw_id,
            "host": inst.host,
            "ssh_port": inst.port,
            "ports": [inst.port],
            "login_username": inst.username,
        },
    )
    StoreGatewayDirectory(w.s).record_inventory(
        gw_id,
        [
            InventoryItem(
                "cobas-1",
                inst.host,
                (inst.port,),
                "ssh",
                "chemistry",
                "c503",
                True,
                inst.host_key_fingerprint,
            )
        ],
    )
    w.s.estate.set_credential(
        w.actors["hadmin"], "cobas-1", "private_key", inst.client_private_key_pem, inst.username
    )
    key_path, public_line = engineer_key(tmp)
    w.s.people.add_key(w.actors["eng"], public_line)
    return key_path, w.enrol_totp("eng")
