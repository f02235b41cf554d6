"""Thin asyncssh hooks for one engineer connection.

Authentication (deny by default): the login name must parse, the offered key
must be registered to an active engineer (``AccessPolicy.engineer_for_key``)
and its signature must verify; then a TOTP code through keyboard-interactive
(``AccessPolicy.check_totp``: accepted once, lockout after repeated failures)
completes the login.  A hoshu user certificate completes it alone.  Channels:
sessions (shell, exec, sftp, scp) and direct-tcpip forwards, at most
``max_channels`` at once; each is authorized by :class:`~broker.ssh.channels.Channels`.
"""

from __future__ import annotations

import logging
from typing import Any

import asyncssh
from asyncssh.auth import KbdIntChallenge, KbdIntResponse
from asyncssh.public_key import decode_ssh_certificate, decode_ssh_public_key

from broker.ssh.auth import AuthState, parse_login, source_allowed
from broker.ssh.channels import Channels
from broker.ssh.frontdoor import FrontDoor

log = logging.getLogger(__name__)

_KBD_PROMPT = ("Verification code: ", False)


class EngineerServer(asyncssh.SSHServer):
    def __init__(self, door: FrontDoor) -> None:
        self.door = door
        self.state = AuthState()
        self.conn: asyncssh.SSHServerConnection | None = None
        self.src = ""
        self.src_port = 0
        self.channels: Channels | None = None
        self._pending = False

    # --- connection ---------------------------------------------------------
    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        peer = conn.get_extra_info("peername") or ("", 0)
        self.src, self.src_port = str(peer[0]), int(peer[1])
        self.door.track(conn, True)
        self._pending = True
        if not self.door.pending(self.src, +1):
            # a flood of half-open logins from one address: drop this one at once
            self.state.failure = "too many connections authenticating from this address"
            conn.close()

    def _not_pending(self) -> None:
        if self._pending:
            self._pending = False
            self.door.pending(self.src, -1)

    def connection_lost(self, exc: Exception | None) -> None:
        self._not_pending()
        if self.conn is not None:
            self.door.track(self.conn, False)
        if self.channels is not None:
            self.channels.close()
        if not self.state.done:
            why = self.state.failure
            if exc is not None and "timeout" in str(exc).lower():
                why = f"authentication not completed in time ({why})"
            self._login_event(False, why)

    def _cols(self) -> dict[str, Any]:
        eng = self.state.engineer
        login = self.state.login
        return {
            "ActorUsername": eng.username if eng else (login.user if login else None),
            "ActorUserId": eng.user_id if eng else None,
            "ActorUserType": "engineer",
            "ActorOrganization": (eng.organization or None) if eng else None,
            "SrcIpAddr": self.src or None,
            "SrcPortNumber": self.src_port or None,
            "TargetHostname": login.instrument if login else None,
        }

    def _login_event(self, ok: bool, why: str) -> None:
        self.door.emit(
            "ssh.login",
            EventResult="Success" if ok else "Failure",
            EventResultDetails=why,
            EventSeverity=None if ok else "Medium",
            EventMessage=f"SSH login {'accepted' if ok else 'refused'}: {why}",
            details={"method": self.state.method or None,
                     "key_fingerprint": self.state.key_fingerprint or None,
                     "cert_serial": self.state.cert_serial},
            **self._cols(),
        )

    # --- authentication -----------------------------------------------------
    def begin_auth(self, username: str) -> bool:
        """Called again if the client changes user name: everything proven so far is dropped."""
        if self.state.raw_login is not None and self.state.raw_login != username:
            self.state = AuthState()
        self.state.raw_login = username
        self.state.login = parse_login(username)
        if self.state.login is None:
            self.state.failure = "malformed login name"
        if self.door.options.banner and self.conn is not None:
            self.conn.send_auth_banner(self.door.options.banner)
        return True

    def password_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return not self.state.key_proven

    def kbdint_auth_supported(self) -> bool:
        return self.state.key_proven and not self.state.done

    def take_partial(self) -> bool:
        pending, self.state.partial_pending = self.state.partial_pending, False
        return pending

    def resolve_client_key(self, key_data: bytes) -> asyncssh.SSHKey | None:
        """The key to verify the signature with, or None (unknown key, bad cert)."""
        login = self.state.login
        if login is None:
            return None
        try:
            cert = decode_ssh_certificate(key_data)
        except (asyncssh.KeyImportError, ValueError):
            cert = None
        if cert is not None:
            ca = self.door.ca
            if ca is None or not ca.accepts(cert, login.user, self.door.clock()):
                self.state.failure = "certificate not valid for this user"
                return None
            key: asyncssh.SSHKey = cert.key
        else:
            try:
                key = decode_ssh_public_key(key_data)
            except (asyncssh.KeyImportError, ValueError):
                return None
        line = key.export_public_key().decode().strip()
        try:
            eng = self.door.policy.engineer_for_key(login.user, line)
        except Exception:
            log.exception("engineer lookup failed")
            eng = None
        if eng is None:
            self.state.failure = "unknown user or key"
            return None
        if not source_allowed(self.src, eng.source_cidrs):
            self.state.failure = "source address not allowed for this vendor"
            return None
        self.state.candidates[key_data] = eng
        return key

    def key_proven(self, key_data: bytes, key: asyncssh.SSHKey) -> bool:
        """Signature verified: a certificate completes the login, a plain key is partial."""
        if not self.state.prove_key(key_data, key.get_fingerprint("sha256")):
            return False
        try:
            cert = decode_ssh_certificate(key_data)
        except (asyncssh.KeyImportError, ValueError):
            return False
        self.state.partial_pending = False
        self.state.cert_serial = int(getattr(cert, "_serial", 0))
        self.state.complete("certificate")
        self._login_event(True, "user certificate issued after MFA")
        self._authenticated()
        return True

    def get_kbdint_challenge(
        self, username: str, lang: str, submethods: str
    ) -> KbdIntChallenge:
        if not self.state.key_proven or self.state.engineer is None:
            return False
        return ("hoshu", "Enter the code from your authenticator app.", "", [_KBD_PROMPT])

    def validate_kbdint_response(
        self, username: str, responses: KbdIntResponse
    ) -> KbdIntChallenge | bool:
        eng = self.state.engineer
        if eng is None or not self.state.key_proven or len(responses) != 1:
            return False
        code = str(responses[0]).strip()
        now = self.door.clock()
        try:
            result = self.door.policy.check_totp(eng.user_id, code, now)
        except Exception:
            log.exception("TOTP check failed")
            return False
        if result.ok:
            self.state.complete("publickey+totp")
            self._login_event(True, "public key and TOTP")
            self._authenticated()
            return True
        self.state.failure = f"second factor refused ({result.reason or 'wrong'})"
        cols = self._cols()
        self.door.emit("user.mfa_failed", EventResult="Failure",
                       EventResultDetails=result.reason or "wrong",
                       details={"method": "totp",
                                "failures": result.failures}, **cols)
        if result.locked_now:
            until = result.locked_until.isoformat() if result.locked_until else None
            self.door.emit("user.locked_out", EventResultDetails="too many failed codes",
                           details={"failures": result.failures, "window_s": 900,
                                    "locked_until": until}, **cols)
            self.door.emit("alert.raised", EventResultDetails="account locked out",
                           details={"alert": "user.locked_out",
                                    "reason": f"{eng.username}: too many failed codes"},
                           **cols)
        if self.conn is not None:
            if result.locked_until is not None:
                msg = (f"hoshu: account locked until {result.locked_until:%H:%M} UTC "
                       "after too many failed codes\n")
            elif result.reason == "replayed":
                msg = "hoshu: that code was already used; wait for the next one\n"
            else:
                msg = "hoshu: wrong code\n"
            self.conn.send_auth_banner(msg)
        return False

    def _authenticated(self) -> None:
        self._not_pending()
        eng, login = self.state.engineer, self.state.login
        assert eng is not None and login is not None and self.conn is not None
        self.channels = Channels(self.door, self.conn, eng, login, self.src, self.src_port)

    # --- channels -------------------------------------------------------------
    def session_requested(self) -> Any:
        if self.channels is None:
            return False
        return self.channels.session()

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> Any:
        if self.channels is None:
            return False
        return self.channels.forward(dest_host, dest_port)

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        return False  # no remote (-R) forwarding: nothing may listen for the hospital side

    def unix_connection_requested(self, dest_path: str) -> bool:
        return False

    def unix_server_requested(self, listen_path: str) -> bool:
        return False
