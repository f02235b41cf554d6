"""TLS certificates of RDP instruments, pinned like SSH host keys.

An RDP instrument's certificate fingerprint (``SHA256:`` and the hex SHA-256 of the
DER certificate) is kept in the instrument's host-key fields: the gateway reports
SSH host keys only for ``ssh``/``sftp`` instruments, so for an ``rdp`` instrument
they hold its certificate.  The first certificate seen is kept
(``instrument.key_pinned``); a different one is refused and left waiting
(``instrument.key_changed``, ``pending_host_key_fingerprint``) until an approver of
the hospital accepts it with the same accept flow as a changed SSH host key
(``hoshu instrument accept-host-key``, the API's ``accept-host-key``).
"""

from __future__ import annotations

from broker.access.model import Instrument
from broker.access.ports import SYSTEM
from broker.access.services import Services


class CertificatePins:
    """``DesktopGate``'s ``pin_certificate`` over the store."""

    def __init__(self, services: Services) -> None:
        self.s = services

    def __call__(self, instrument: str, fingerprint: str) -> str | None:
        """None if ``fingerprint`` is (now) the instrument's pinned certificate; else why
        the session is refused."""
        with self.s.ctx.uow() as tx:
            inst = tx.one(Instrument, name=instrument)
            if inst is None:
                return f"no instrument {instrument}"
            if inst.host_key_fingerprint is None and inst.pending_host_key_fingerprint is None:
                inst.host_key_fingerprint = fingerprint
                tx.save(inst)
                self.s.ctx.emit(
                    "instrument.key_pinned",
                    SYSTEM,
                    ObjectType="instrument",
                    Object=inst.name,
                    TargetHostname=inst.name,
                    HospitalId=inst.hospital_id,
                    details={"fingerprint": fingerprint, "kind": "tls_certificate"},
                )
                return None
            if (
                fingerprint == inst.host_key_fingerprint
                and inst.pending_host_key_fingerprint is None
            ):
                return None
            if fingerprint != inst.pending_host_key_fingerprint:
                inst.pending_host_key_fingerprint = fingerprint
                tx.save(inst)
                self.s.ctx.emit(
                    "instrument.key_changed",
                    SYSTEM,
                    ObjectType="instrument",
                    Object=inst.name,
                    TargetHostname=inst.name,
                    HospitalId=inst.hospital_id,
                    details={
                        "old_fingerprint": inst.host_key_fingerprint,
                        "new_fingerprint": fingerprint,
                        "kind": "tls_certificate",
                    },
                )
            return (
                f"{instrument}'s TLS certificate changed ({fingerprint}); "
                "the hospital's approver must accept it first"
            )
