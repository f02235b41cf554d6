"""The broker's SSH user certificate authority.

``hoshu login`` (password + TOTP at the control plane) ends with
:meth:`UserCA.issue`: a certificate over the engineer's registered public key,
principal = the engineer's user name, valid from now until 8 hours later or
the end of the engineer's grants, whichever is sooner.  The front door accepts
such a certificate as both factors, because it could only be issued after MFA.

Deny by default: :meth:`UserCA.accepts` is False for a certificate signed by any
other key, of the wrong type, not yet valid or expired (by the injected clock),
or not naming the user.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncssh

from audit import new_event
from audit.emitter import Emitter
from audit.keyfiles import create_secret
from broker.access.certs import MAX_CERT_LIFETIME
from broker.access.errors import PermissionDenied
from wire.sshcompat import cert_is_user, cert_valid_at


class CertificateRefused(PermissionDenied):
    """No certificate can be issued (no remaining grant time, bad key)."""

    code = "no_grant"


class UserCA:
    def __init__(self, key: asyncssh.SSHKey) -> None:
        self._key = key
        self._pub = key.convert_to_public()

    @classmethod
    def generate(cls) -> UserCA:
        return cls(asyncssh.generate_private_key("ssh-ed25519"))

    @classmethod
    def load_or_create(cls, path: Path) -> UserCA:
        if path.exists():
            return cls(asyncssh.read_private_key(path))
        key = asyncssh.generate_private_key("ssh-ed25519")
        create_secret(path, key.export_private_key())  # born 0600; never chmod-ed
        return cls(key)

    @property
    def public_key(self) -> asyncssh.SSHKey:
        return self._pub

    def public_line(self) -> str:
        return self._pub.export_public_key().decode().strip()

    def issue(
        self,
        public_key_line: str,
        *,
        username: str,
        user_id: str,
        now: datetime,
        grants_end: datetime | None,
        serial: int,
        emitter: Emitter,
    ) -> str:
        """Return an OpenSSH certificate line for ``public_key_line``.

        Raises :class:`CertificateRefused` when no grant time is left.
        """
        end = now + MAX_CERT_LIFETIME
        if grants_end is not None:
            end = min(end, grants_end)
        if end <= now:
            raise CertificateRefused("no active grant: no certificate issued")
        try:
            user_key = asyncssh.import_public_key(public_key_line)
        except (asyncssh.KeyImportError, ValueError) as exc:
            raise CertificateRefused("not an OpenSSH public key") from exc
        cert = self._key.generate_user_certificate(
            user_key,
            f"hoshu:{username}:{serial}",
            serial=serial,
            principals=[username],
            valid_after=now - timedelta(seconds=30),
            valid_before=end,
            permit_x11_forwarding=False,
            permit_agent_forwarding=False,
            permit_user_rc=False,
            touch_required=False,
        )
        emitter.emit(
            new_event(
                "ssh.cert_issued",
                clock=lambda: now,
                ActorUsername=username,
                ActorUserId=user_id,
                ActorUserType="engineer",
                details={
                    "cert_serial": serial,
                    "valid_until": end.isoformat(),
                    "key_fingerprint": user_key.get_fingerprint("sha256"),
                },
            )
        )
        line: str = cert.export_certificate().decode().strip()
        return line

    def accepts(self, cert: Any, username: str, now: datetime) -> bool:
        """True only for a user certificate we signed, naming ``username``, valid ``now``."""
        if cert.is_x509 or cert.signing_key != self._pub:
            return False
        # asyncssh's own validate() reads the wall clock; ours is injected.
        if not cert_is_user(cert):
            return False
        if username not in cert.principals:
            return False
        return cert_valid_at(cert, int(now.timestamp()))
