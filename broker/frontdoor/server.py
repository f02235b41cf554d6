"""Thin asyncssh hooks for one engineer connection.

Authentication (deny by default): the login name must parse, the offered key
must be registered to an active engineer (``AccessPolicy.engineer_for_key``)
and its signature must verify; then a TOTP code through keyboard-interactive
(``AccessPolicy.check_totp``: accepted once, lockout after repeated failures)
completes the login.  A hoshu user certificate completes it alone, if the
policy still honours its serial (``AccessPolicy.cert_usable``: not revoked by a
sign-out, account not locked or deactivated).  A login not completed within
``login_timeout_s`` is disconnected with the reason, which the client prints.
The policy alone writes ``user.mfa_failed``/``user.locked_out``; this module
writes ``ssh.login``, and failures from one source beyond a few a minute are
summed (:meth:`Door.login_failed`).  Channels:
sessions (shell, exec, sftp, scp) and direct-tcpip forwards, at most
``max_channels`` at once; each is authorized by :class:`~broker.frontdoor.channels.Channels`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

import asyncssh

from broker.access.door import Engineer
from broker.frontdoor.auth import AuthState, parse_login, source_allowed
from broker.frontdoor.channels import Channels
from broker.frontdoor.context import Door
from wire.sshcompat import (
    KbdIntChallenge,
    KbdIntResponse,
    cert_serial,
    decode_ssh_certificate,
    decode_ssh_public_key,
    refuse_and_linger,
)

log = logging.getLogger(__name__)

_KBD_PROMPT = ("Verification code: ", False)
FLOOD_REFUSAL = "hoshu: too many sign-ins in progress from your address; try again shortly"
FLOOD_LINGER_S = 1.0  # a refused flooder's socket stays open (unread) this long


class EngineerServer(asyncssh.SSHServer):
    def __init__(self, door: Door) -> None:
        self.door = door
        self.state = AuthState()
        self.conn: asyncssh.SSHServerConnection | None = None
        self.src = ""
        self.src_port = 0
        self.channels: Channels | None = None
        self.hospital_id: str | None = None  # of the instrument the login names
        self._pending = False
        self._timer: asyncio.TimerHandle | None = None
        self._timed_out = False
        self._cert_refused: set[int] = set()

    # --- connection ---------------------------------------------------------
    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        peer = conn.get_extra_info("peername") or ("", 0)
        self.src, self.src_port = str(peer[0]), int(peer[1])
        self.door.track(conn, True)
        self._pending = True
        self._timer = asyncio.get_running_loop().call_later(
            self.door.options.login_timeout_s, self._login_expired
        )
        if not self.door.pending(self.src, +1):
            # a flood of half-open logins from one address: refuse this one at once, but
            # readably: asyncssh sends its identification string right after this hook, so
            # the SSH_MSG_DISCONNECT follows it on the next turn (no key exchange, no crypto)
            self.state.failure = "too many connections authenticating from this address"
            asyncio.get_running_loop().call_soon(self._refuse_flood)

    def _refuse_flood(self) -> None:
        """SSH_MSG_DISCONNECT with the reason, then read nothing more and hang up shortly.

        Closing at once would make the kernel answer the client's KEXINIT with a reset,
        and OpenSSH would report "Broken pipe" before it reads the reason; so the socket
        stays open, not read, for ``FLOOD_LINGER_S`` (the slot stays counted until then).
        """
        conn = self.conn
        if conn is None:
            return
        refuse_and_linger(conn, asyncssh.DISC_TOO_MANY_CONNECTIONS, FLOOD_REFUSAL, FLOOD_LINGER_S)

    def _login_expired(self) -> None:
        """Out of time (OpenSSH's LoginGraceTime): say so on the disconnect, then close."""
        self._timer = None
        if self.state.done or self.conn is None:
            return
        self._timed_out = True
        limit = f"{self.door.options.login_timeout_s:g}"
        self.conn.disconnect(
            asyncssh.DISC_BY_APPLICATION,
            f"hoshu: sign-in took longer than {limit} s; connect again",
        )

    def _not_pending(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
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
            if self._timed_out or (exc is not None and "timeout" in str(exc).lower()):
                limit = f"{self.door.options.login_timeout_s:g}"
                why = f"login_timeout: not completed in time, {limit} s ({why})"
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
            "HospitalId": self.hospital_id,
        }

    def _login_event(self, ok: bool, why: str) -> None:
        emit = self.door.emit if ok else self.door.login_failed
        emit(
            "ssh.login",
            EventResult="Success" if ok else "Failure",
            EventResultDetails=why,
            EventSeverity=None if ok else "Medium",
            EventMessage=f"SSH login {'accepted' if ok else 'refused'}: {why}",
            details={
                "method": self.state.method or None,
                "key_fingerprint": self.state.key_fingerprint or None,
                "cert_serial": self.state.cert_serial,
            },
            **self._cols(),
        )

    # --- authentication -----------------------------------------------------
    async def begin_auth(self, username: str) -> bool:
        """Called again if the client changes user name: everything proven so far is dropped."""
        if self.state.raw_login is not None and self.state.raw_login != username:
            self.state = AuthState()
        self.state.raw_login = username
        self.state.login = parse_login(username)
        self.hospital_id = None
        if self.state.login is None:
            self.state.failure = "malformed login name"
        elif self.state.login.instrument:
            try:
                self.hospital_id = await self.door.db(
                    self.door.policy.hospital_of, self.state.login.instrument
                )
            except Exception:
                log.exception("instrument lookup failed")
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

    async def resolve_client_key(self, key_data: bytes) -> asyncssh.SSHKey | None:
        """The key to verify the signature with, or None (unknown key, bad cert)."""
        login = self.state.login
        if login is None:
            return None
        if not self.door.view_current():
            self.state.failure = "access rights cannot be confirmed now (database unreachable)"
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
            eng = await self.door.db(self.door.policy.engineer_for_key, login.user, line)
        except Exception:
            log.exception("engineer lookup failed")
            eng = None
        if eng is None:
            self.state.failure = "unknown user or key"
            return None
        if not source_allowed(eng.source_cidrs, self.src):
            self.state.failure = "source address not allowed for this vendor"
            return None
        if cert is not None and not await self._cert_still_good(cert, eng):
            return None
        self.state.candidates[key_data] = eng
        return key

    async def _cert_still_good(self, cert: Any, eng: Engineer) -> bool:
        """A certificate signs in only while the policy honours its serial (fail closed)."""
        serial = cert_serial(cert)
        try:
            why = await self.door.db(
                self.door.policy.cert_usable, eng.user_id, serial, self.door.clock()
            )
        except Exception:
            log.exception("certificate check failed")
            why = "cannot check the certificate now"
        if why is None:
            return True
        if serial not in self._cert_refused:  # the probe and the signed request: once
            self._cert_refused.add(serial)
            self.state.engineer = eng
            self.state.cert_serial = serial
            self.state.method = "certificate"
            self._login_event(False, f"certificate refused: {why}")
            self.state.method = ""
            if self.conn is not None:
                self.conn.send_auth_banner(
                    f"hoshu: certificate refused: {why}; sign in again (hoshu login)\n"
                )
        self.state.failure = f"certificate refused: {why}"
        return False

    def key_proven(self, key_data: bytes, key: asyncssh.SSHKey) -> bool:
        """Signature verified: a certificate completes the login, a plain key is partial."""
        if not self.state.prove_key(key_data, key.get_fingerprint("sha256")):
            return False
        try:
            cert = decode_ssh_certificate(key_data)
        except (asyncssh.KeyImportError, ValueError):
            return False
        self.state.partial_pending = False
        self.state.cert_serial = cert_serial(cert)
        self.state.complete("certificate")
        self._login_event(True, "user certificate issued after MFA")
        self._authenticated()
        return True

    def get_kbdint_challenge(self, username: str, lang: str, submethods: str) -> KbdIntChallenge:
        if not self.state.key_proven or self.state.engineer is None:
            return False
        return ("hoshu", "Enter the code from your authenticator app.", "", [_KBD_PROMPT])

    async def validate_kbdint_response(
        self, username: str, responses: KbdIntResponse
    ) -> KbdIntChallenge | bool:
        eng = self.state.engineer
        if eng is None or not self.state.key_proven or len(responses) != 1:
            return False
        code = str(responses[0]).strip()
        now = self.door.clock()
        if not self.door.view_current():
            self.state.failure = "access rights cannot be confirmed now (database unreachable)"
            return False
        try:
            result = await self.door.db(
                functools.partial(
                    self.door.policy.check_totp,
                    eng.user_id,
                    code,
                    now,
                    src_ip=self.src or None,
                    hospital_id=self.hospital_id,
                )
            )
        except Exception:
            log.exception("TOTP check failed")
            return False
        if result.ok:
            self.state.complete("publickey+totp")
            self._login_event(True, "public key and TOTP")
            self._authenticated()
            return True
        # user.mfa_failed, user.locked_out and the alert are the policy's to write
        self.state.failure = f"second factor refused ({result.reason or 'wrong'})"
        if self.conn is not None:
            if result.locked_until is not None:
                msg = (
                    f"hoshu: account locked until {result.locked_until:%H:%M} UTC "
                    "after too many failed codes\n"
                )
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
        if self.channels is None or self.door.draining:  # draining: the broker is stopping
            return False
        return self.channels.session()

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> Any:
        if self.channels is None or self.door.draining:
            return False
        return self.channels.forward(dest_host, dest_port)

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        return False  # no remote (-R) forwarding: nothing may listen for the hospital side

    def unix_connection_requested(self, dest_path: str) -> bool:
        return False

    def unix_server_requested(self, listen_path: str) -> bool:
        return False
