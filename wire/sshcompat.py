"""The fence around asyncssh's internals: the only module that touches them.

hoshu needs a few things asyncssh has no public API for.  Every use of a
private asyncssh member (or of a method asyncssh does not document for
overriding) is here, behind a function or class with a name that says what it
is for; the rest of the tree calls these and a ruff rule (``SLF001``) keeps
private access out of everywhere else.  Each member has a canary test in
``tests/wire/test_sshcompat.py`` that names it when asyncssh changes it.

Importing this module checks the installed asyncssh against the range these
members were tested with (:data:`TESTED_RANGE`) and raises
:class:`UnsupportedAsyncssh` outside it: a newer asyncssh is refused at start
instead of failing one login at a time.

What is used, and why:

* ``SSHServerConnection._owner`` (as ``get_owner()``), ``._session_id``,
  ``validate_public_key`` and ``send_userauth_failure`` — RFC 4252 partial
  success: asyncssh completes authentication when one method succeeds, so
  :class:`PartialSuccessConnection` turns a verified public-key signature into
  "partial success, go on" unless the owner says the key completes the login.
* ``._auth_in_progress``, ``._auth_complete``, ``._packet_handlers`` and
  ``._process_service_request`` — clients that ask for ``ssh-userauth`` again
  before each method (paramiko) are answered as OpenSSH's sshd does.
* ``SSHServerConnection(loop, options, acceptor, error_handler, wait)`` — the
  connection class is chosen by hoshu, so it is built by hand
  (:func:`server_connection_factory`); ``asyncssh.listen`` takes no class.
* ``._transport`` — :func:`coalesce_writes` puts
  :class:`~wire.transport.CoalescingTransport` under a connection before it
  writes anything.
* ``._send_disconnect`` and ``._transport`` — :func:`refuse_and_linger` sends a
  disconnect with its reason and leaves the socket open, unread, for a moment
  (``disconnect()`` closes it in the same turn, and the client would then see a
  reset before it reads the reason).
* ``SSHOpenSSHCertificate._serial``, ``._cert_type``, ``._valid_after`` and
  ``._valid_before`` — hoshu checks its certificates against an injected clock
  (``validate()`` reads the wall clock) and audits their serials.
* ``asyncssh.public_key.decode_ssh_certificate``/``decode_ssh_public_key`` and
  ``asyncssh.auth.KbdIntChallenge``/``KbdIntResponse`` — not exported at the top
  level; re-exported from here.

Pure plumbing: no sockets are opened here and nothing of hoshu's but
:mod:`wire.transport` is imported, so both the gateway and the broker may use it.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, cast

import asyncssh
from asyncssh.auth import KbdIntChallenge, KbdIntResponse
from asyncssh.constants import MSG_SERVICE_ACCEPT, MSG_SERVICE_REQUEST
from asyncssh.packet import SSHPacket, String
from asyncssh.public_key import CERT_TYPE_USER, decode_ssh_certificate, decode_ssh_public_key

from wire.transport import CoalescingTransport

__all__ = [
    "TESTED_RANGE",
    "KbdIntChallenge",
    "KbdIntResponse",
    "PartialSuccessConnection",
    "PartialSuccessHooks",
    "UnsupportedAsyncssh",
    "cert_is_user",
    "cert_serial",
    "cert_valid_at",
    "check_version",
    "coalesce_writes",
    "decode_ssh_certificate",
    "decode_ssh_public_key",
    "refuse_and_linger",
    "server_connection_factory",
]

TESTED_RANGE = ">=2.24.1,<2.25"  # the same range as pyproject.toml and requirements.lock
_LOWEST = (2, 24, 1)
_BEYOND = (2, 25)


class UnsupportedAsyncssh(ImportError):
    """The installed asyncssh is outside the range hoshu's use of its internals was tested on."""


def _release(version: str) -> tuple[int, ...]:
    m = re.match(r"(\d+(?:\.\d+)*)", version)
    if m is None:
        raise UnsupportedAsyncssh(
            f"cannot read the asyncssh version {version!r}; "
            f"hoshu is tested with asyncssh{TESTED_RANGE}"
        )
    return tuple(int(p) for p in m.group(1).split("."))


def check_version(version: str) -> None:
    """Raise :class:`UnsupportedAsyncssh` unless ``version`` is in :data:`TESTED_RANGE`."""
    release = _release(version)
    if not _LOWEST <= release < _BEYOND:
        raise UnsupportedAsyncssh(
            f"asyncssh {version} is installed, but hoshu uses asyncssh internals "
            f"(wire/sshcompat.py) tested only with asyncssh{TESTED_RANGE}; "
            f"install a version in that range"
        )


check_version(asyncssh.__version__)


# --- certificates -------------------------------------------------------------------------
def cert_serial(cert: Any) -> int:
    """The serial number of an OpenSSH certificate (0 if it has none)."""
    return int(getattr(cert, "_serial", 0))


def cert_is_user(cert: Any) -> bool:
    """True for an OpenSSH *user* certificate (not a host certificate)."""
    return bool(getattr(cert, "_cert_type", None) == CERT_TYPE_USER)


def cert_valid_at(cert: Any, ts: int) -> bool:
    """True if the Unix time ``ts`` is inside the certificate's validity window.

    asyncssh's own ``validate()`` compares with the wall clock; hoshu's clock is
    injected, so the window is read here."""
    return bool(getattr(cert, "_valid_after", 0) <= ts < getattr(cert, "_valid_before", 0))


# --- transport ----------------------------------------------------------------------------
def coalesce_writes(conn: asyncssh.SSHClientConnection | asyncssh.SSHServerConnection) -> None:
    """Put a :class:`CoalescingTransport` under ``conn`` (call before it writes anything).

    From then on its packets leave joined per event-loop pass.  A connection
    whose transport is not a plain asyncio transport is left as it is."""
    transport = conn._transport  # asyncssh has no public hook for this
    if isinstance(transport, asyncio.Transport):
        conn._transport = CoalescingTransport(transport)


def refuse_and_linger(
    conn: asyncssh.SSHServerConnection, code: int, reason: str, linger_s: float
) -> None:
    """Send SSH_MSG_DISCONNECT (``code``, ``reason``) on ``conn``, stop reading it, and
    abort it after ``linger_s`` seconds, so the client reads the reason first."""
    conn._send_disconnect(code, reason, asyncssh.DEFAULT_LANG)
    transport = conn._transport
    if transport is None:
        return
    transport.pause_reading()
    asyncio.get_running_loop().call_later(linger_s, conn.abort)


# --- partial success (RFC 4252 §5.1) --------------------------------------------------------
class PartialSuccessHooks(Protocol):
    """What :class:`PartialSuccessConnection` asks its owner (the ``SSHServer``)."""

    def resolve_client_key(
        self, key_data: bytes
    ) -> asyncssh.SSHKey | Awaitable[asyncssh.SSHKey | None] | None:
        """The key to verify the signature with, or None to refuse the key (may be a
        coroutine: a look-up that waits on a database runs off the event loop)."""
        ...

    def key_proven(self, key_data: bytes, key: asyncssh.SSHKey) -> bool:
        """The signature verified: True completes the login, False is a failure."""
        ...

    def take_partial(self) -> bool:
        """True (once) if the failure just sent should carry the partial-success flag."""
        ...


class PartialSuccessConnection(asyncssh.SSHServerConnection):
    """asyncssh server connection whose public-key success may be only partial.

    ``validate_public_key`` is asyncssh's own check (key lookup, then signature
    over the session id); only the lookup and the final decision belong to the
    owner (:class:`PartialSuccessHooks`): ``False`` plus the partial-success flag
    on the failure message asks the client for another method.  Writes are
    coalesced from the start (:class:`CoalescingTransport`).
    """

    def _hooks(self) -> PartialSuccessHooks:
        return cast(PartialSuccessHooks, self.get_owner())

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # one send per loop pass instead of two per packet (see CoalescingTransport)
        super().connection_made(CoalescingTransport(cast(asyncio.Transport, transport)))

    async def validate_public_key(
        self, username: str, key_data: bytes, msg: bytes, signature: bytes
    ) -> bool:
        hooks = self._hooks()
        found = hooks.resolve_client_key(key_data)
        key = await found if inspect.isawaitable(found) else found
        if key is None:
            return False
        if not msg:
            return True  # a probe: "would you accept this key?"
        if not key.verify(String(self._session_id) + msg, signature):
            return False
        return hooks.key_proven(key_data, key)

    def send_userauth_failure(self, partial_success: bool) -> None:
        super().send_userauth_failure(partial_success or self._hooks().take_partial())

    def _process_service_request_again(self, pkttype: int, pktid: int, packet: SSHPacket) -> None:
        """Accept a repeated ``ssh-userauth`` service request during authentication.

        Some clients (paramiko) ask for the service again before each method,
        also after a partial success; OpenSSH's sshd allows it, asyncssh not.
        """
        if self._auth_in_progress and not self._auth_complete:
            service = packet.get_string()
            packet.check_end()
            if service != b"ssh-userauth":
                raise asyncssh.ServiceNotAvailable("Unexpected service in service request")
            self.send_packet(MSG_SERVICE_ACCEPT, String(service))
            return
        asyncssh.SSHServerConnection._process_service_request(self, pkttype, pktid, packet)

    _packet_handlers = {  # noqa: RUF012  (asyncssh dispatches through this class table)
        **asyncssh.SSHServerConnection._packet_handlers,
        MSG_SERVICE_REQUEST: _process_service_request_again,
    }


def server_connection_factory(
    options: asyncssh.SSHServerConnectionOptions,
) -> Callable[[], asyncssh.SSHServerConnection]:
    """A protocol factory for ``loop.create_server`` making :class:`PartialSuccessConnection`.

    Call it inside the running loop that will serve the connections."""
    loop = asyncio.get_running_loop()

    def factory() -> asyncssh.SSHServerConnection:
        return PartialSuccessConnection(loop, options, None, None, None)

    return factory
