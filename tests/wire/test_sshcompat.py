"""Canaries for the asyncssh fence (wire/sshcompat.py): one per internal hoshu relies on.

Each test names the asyncssh member it guards, so an asyncssh upgrade that moves
or renames one fails here, by name, before any login or tunnel test does.  The
connection tests run a real asyncssh server and client on loopback.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import subprocess
import sys
import tomllib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from asyncssh.constants import MSG_SERVICE_REQUEST

from wire import sshcompat
from wire.sshcompat import (
    PartialSuccessConnection,
    UnsupportedAsyncssh,
    cert_is_user,
    cert_serial,
    cert_valid_at,
    check_version,
    coalesce_writes,
    decode_ssh_certificate,
    decode_ssh_public_key,
    server_connection_factory,
)
from wire.transport import CoalescingTransport

ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 20.0
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


# --- the version check -----------------------------------------------------------------------
@pytest.mark.parametrize("version", ["2.24.0", "2.25.0", "2.25", "3.0.0", "2.14.2", "garbage"])
def test_an_asyncssh_outside_the_tested_range_is_refused_by_name(version: str) -> None:
    with pytest.raises(UnsupportedAsyncssh) as exc:
        check_version(version)
    assert ">=2.24.1,<2.25" in str(exc.value)


@pytest.mark.parametrize("version", ["2.24.1", "2.24.9", "2.24.10.dev1"])
def test_an_asyncssh_inside_the_tested_range_is_accepted(version: str) -> None:
    check_version(version)


def test_importing_the_fence_with_an_untested_asyncssh_fails_naming_the_range() -> None:
    code = "import asyncssh; asyncssh.__version__ = '2.25.0'\nimport broker.frontdoor.door\n"
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert run.returncode != 0
    assert "UnsupportedAsyncssh" in run.stderr and "asyncssh>=2.24.1,<2.25" in run.stderr


def test_the_tested_range_is_the_one_pinned_in_pyproject_and_the_lock_file() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"asyncssh{sshcompat.TESTED_RANGE}" in deps
    pinned = re.search(r"^asyncssh==(\S+)$", (ROOT / "requirements.lock").read_text(), re.M)
    assert pinned is not None, "requirements.lock pins no asyncssh"
    check_version(pinned.group(1))
    assert asyncssh.__version__ == pinned.group(1)


# --- certificates: _serial, _cert_type, _valid_after, _valid_before ------------------------
def _user_cert(serial: int = 42) -> tuple[Any, asyncssh.SSHKey]:
    ca = asyncssh.generate_private_key("ssh-ed25519")
    user = asyncssh.generate_private_key("ssh-ed25519")
    cert = ca.generate_user_certificate(
        user,
        "id",
        serial=serial,
        principals=["alice"],
        valid_after=T0,
        valid_before=T0 + timedelta(hours=1),
    )
    return decode_ssh_certificate(cert.public_data), ca


@pytest.mark.parametrize("member", ["_serial", "_cert_type", "_valid_after", "_valid_before"])
def test_a_decoded_certificate_still_has_the_member_the_fence_reads(member: str) -> None:
    cert, _ = _user_cert()
    assert hasattr(cert, member), (
        f"asyncssh's SSHOpenSSHCertificate lost {member}: update wire/sshcompat.py"
    )


def test_cert_serial_reads_the_serial_the_ca_signed() -> None:
    """asyncssh member: SSHOpenSSHCertificate._serial."""
    cert, _ = _user_cert(serial=987654321)
    assert cert_serial(cert) == 987654321


def test_cert_is_user_tells_user_from_host_certificates() -> None:
    """asyncssh member: SSHOpenSSHCertificate._cert_type (CERT_TYPE_USER = 1)."""
    user_cert, ca = _user_cert()
    host = asyncssh.generate_private_key("ssh-ed25519")
    host_cert = decode_ssh_certificate(
        ca.generate_host_certificate(host, "h", principals=["h"]).public_data
    )
    assert cert_is_user(user_cert)
    assert not cert_is_user(host_cert)


def test_cert_valid_at_uses_the_given_time_not_the_wall_clock() -> None:
    """asyncssh members: SSHOpenSSHCertificate._valid_after and ._valid_before."""
    cert, _ = _user_cert()
    start, end = int(T0.timestamp()), int((T0 + timedelta(hours=1)).timestamp())
    assert not cert_valid_at(cert, start - 1)
    assert cert_valid_at(cert, start)
    assert cert_valid_at(cert, end - 1)
    assert not cert_valid_at(cert, end)  # valid_before is exclusive, as in OpenSSH


def test_the_decoders_read_keys_and_refuse_a_key_as_a_certificate() -> None:
    """asyncssh.public_key.decode_ssh_public_key / decode_ssh_certificate (not top-level API)."""
    key = asyncssh.generate_private_key("ssh-ed25519")
    blob = key.convert_to_public().public_data
    assert decode_ssh_public_key(blob) == key.convert_to_public()
    with pytest.raises(asyncssh.KeyImportError):
        decode_ssh_certificate(blob)


# --- the connection class: constructor, hooks, _packet_handlers ----------------------------
def test_the_connection_constructor_takes_loop_options_acceptor_error_handler_wait() -> None:
    """The fence builds SSHServerConnection(loop, options, acceptor, error_handler, wait)."""
    params = list(inspect.signature(asyncssh.SSHServerConnection.__init__).parameters)
    assert params == ["self", "loop", "options", "acceptor", "error_handler", "wait"], (
        f"SSHServerConnection.__init__ changed to {params}: update server_connection_factory"
    )


def test_the_process_constructor_takes_process_and_sftp_factories() -> None:
    """broker's TransferSession builds SSHServerProcess(process_factory, sftp_factory,
    sftp_version, allow_scp) itself, as asyncssh does for ``process_factory``."""
    params = list(inspect.signature(asyncssh.SSHServerProcess.__init__).parameters)
    assert params == ["self", "process_factory", "sftp_factory", "sftp_version", "allow_scp"], (
        f"SSHServerProcess.__init__ changed to {params}: update broker's TransferSession"
    )


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("validate_public_key", ["self", "username", "key_data", "msg", "signature"]),
        ("send_userauth_failure", ["self", "partial_success"]),
        ("_process_service_request", ["self", "_pkttype", "_pktid", "packet"]),
    ],
)
def test_the_overridden_connection_methods_keep_their_signature(
    method: str, params: list[str]
) -> None:
    found = getattr(asyncssh.SSHServerConnection, method, None)
    assert found is not None, f"asyncssh's SSHServerConnection lost {method}"
    assert list(inspect.signature(found).parameters) == params, (
        f"SSHServerConnection.{method} changed its signature: update wire/sshcompat.py"
    )


def test_the_packet_handler_table_dispatches_service_requests_through_the_class() -> None:
    """asyncssh member: SSHServerConnection._packet_handlers (class-level dispatch table)."""
    base = getattr(asyncssh.SSHServerConnection, "_packet_handlers", None)
    assert isinstance(base, dict), "asyncssh's SSHServerConnection lost _packet_handlers"
    assert base.get(MSG_SERVICE_REQUEST) is asyncssh.SSHServerConnection._process_service_request
    ours = PartialSuccessConnection._packet_handlers
    assert ours[MSG_SERVICE_REQUEST] is PartialSuccessConnection._process_service_request_again
    assert {k: v for k, v in ours.items() if k != MSG_SERVICE_REQUEST} == {
        k: v for k, v in base.items() if k != MSG_SERVICE_REQUEST
    }


@dataclass
class _Seen:
    conns: list[asyncssh.SSHServerConnection] = field(default_factory=list)
    during_auth: list[tuple[object, object]] = field(default_factory=list)
    proven: list[bytes] = field(default_factory=list)
    partials: int = 0


class _Owner(asyncssh.SSHServer):
    """A PartialSuccessHooks owner: the pinned key completes the login."""

    def __init__(self, seen: _Seen, pinned: asyncssh.SSHKey, *, complete: bool) -> None:
        self.seen, self.pinned, self.complete = seen, pinned, complete
        self.conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        self.seen.conns.append(conn)

    def begin_auth(self, username: str) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def resolve_client_key(self, key_data: bytes) -> asyncssh.SSHKey | None:
        assert self.conn is not None
        self.seen.during_auth.append(
            (
                getattr(self.conn, "_auth_in_progress", "missing"),
                getattr(self.conn, "_auth_complete", "missing"),
            )
        )
        key = decode_ssh_public_key(key_data)
        return key if key == self.pinned else None

    def key_proven(self, key_data: bytes, key: asyncssh.SSHKey) -> bool:
        self.seen.proven.append(key_data)
        return self.complete

    def take_partial(self) -> bool:
        self.seen.partials += 1
        return False


@dataclass
class _Door:
    port: int
    seen: _Seen
    key: asyncssh.SSHKey


async def _door(complete: bool) -> tuple[asyncio.Server, _Door]:
    key = asyncssh.generate_private_key("ssh-ed25519")
    seen = _Seen()
    options = asyncssh.SSHServerConnectionOptions(
        server_factory=lambda: _Owner(seen, key.convert_to_public(), complete=complete),
        server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
        password_auth=False,
        kbdint_auth=False,
        public_key_auth=True,
        config=[],
    )
    server = await asyncio.get_running_loop().create_server(
        server_connection_factory(options), "127.0.0.1", 0
    )
    return server, _Door(server.sockets[0].getsockname()[1], seen, key)


@pytest.fixture
async def door() -> AsyncIterator[_Door]:
    server, d = await _door(complete=True)
    yield d
    for conn in d.seen.conns:
        conn.close()
    server.close()
    await server.wait_closed()


async def _connect(port: int, key: asyncssh.SSHKey) -> asyncssh.SSHClientConnection:
    return await asyncio.wait_for(
        asyncssh.connect(
            "127.0.0.1",
            port,
            username="alice",
            client_keys=[key],
            known_hosts=None,
            agent_path=None,
            config=[],
            preferred_auth="publickey",
        ),
        WAIT_S,
    )


async def test_a_verified_signature_over_the_session_id_reaches_the_owner(door: _Door) -> None:
    """asyncssh members: SSHServerConnection._owner (get_owner) and ._session_id."""
    async with await _connect(door.port, door.key):
        server_conn = door.seen.conns[0]
        assert isinstance(server_conn.get_owner(), _Owner)
        session_id = getattr(server_conn, "_session_id", None)
        assert isinstance(session_id, bytes) and session_id, (
            "asyncssh's SSHServerConnection lost _session_id (the signed session id)"
        )
        assert door.seen.proven == [door.key.convert_to_public().public_data]


async def test_auth_flags_read_in_progress_during_auth_and_complete_after(door: _Door) -> None:
    """asyncssh members: SSHServerConnection._auth_in_progress and ._auth_complete."""
    async with await _connect(door.port, door.key):
        assert door.seen.during_auth and all(
            seen == (True, False) for seen in door.seen.during_auth
        ), f"_auth_in_progress/_auth_complete during auth read {door.seen.during_auth}"
        conn = door.seen.conns[0]
        assert (
            getattr(conn, "_auth_in_progress", "missing"),
            getattr(conn, "_auth_complete", "missing"),
        ) == (False, True)


async def test_an_unproven_key_is_a_failure_that_asks_the_owner_for_partial_success() -> None:
    """The overridden validate_public_key and send_userauth_failure are still called."""
    server, d = await _door(complete=False)
    try:
        with pytest.raises(asyncssh.PermissionDenied):
            await _connect(d.port, d.key)
        assert d.seen.proven and d.seen.partials >= 1
    finally:
        for conn in d.seen.conns:
            conn.close()
        server.close()
        await server.wait_closed()


async def test_the_fence_connection_writes_through_a_coalescing_transport(door: _Door) -> None:
    """asyncssh member: SSHConnection._transport (set in connection_made)."""
    async with await _connect(door.port, door.key):
        transport = getattr(door.seen.conns[0], "_transport", None)
        assert isinstance(transport, CoalescingTransport), (
            f"asyncssh's SSHServerConnection._transport is {type(transport).__name__}"
        )


async def test_coalesce_writes_swaps_the_transport_of_a_live_connection(door: _Door) -> None:
    """asyncssh member: SSHConnection._transport, swapped after the connection is made."""
    async with await _connect(door.port, door.key) as conn:
        assert isinstance(getattr(conn, "_transport", None), asyncio.Transport), (
            "asyncssh's SSHClientConnection lost _transport"
        )
        coalesce_writes(conn)
        assert isinstance(getattr(conn, "_transport", None), CoalescingTransport)
        # packets still flow both ways through the swapped transport
        with pytest.raises(asyncssh.ChannelOpenError):
            await asyncio.wait_for(conn.create_session(asyncssh.SSHClientSession), WAIT_S)


def test_no_module_outside_the_fence_imports_an_asyncssh_submodule() -> None:
    """asyncssh's submodules (asyncssh.auth, .public_key, .packet, ...) are internals too:
    only the fence imports them; everything else uses ``asyncssh.<name>`` or the fence."""
    found = [
        f"{path.relative_to(ROOT)}:{n}"
        for top in ("broker", "gateway", "wire", "bench")
        for path in sorted((ROOT / top).rglob("*.py"))
        if path != ROOT / "wire" / "sshcompat.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.match(r"\s*(from asyncssh\.|import asyncssh\.)", line)
    ]
    assert not found, f"asyncssh internals imported outside wire/sshcompat.py: {found}"


def test_a_server_connection_still_has_what_refuse_and_linger_uses() -> None:
    """refuse_and_linger sends the disconnect itself and keeps the socket a moment."""
    cls = asyncssh.SSHServerConnection
    assert callable(getattr(cls, "_send_disconnect", None)), (
        "asyncssh's SSHServerConnection lost _send_disconnect: update wire/sshcompat.py"
    )
    assert callable(getattr(cls, "abort", None))
    inits = [getattr(vars(c).get("__init__"), "__code__", None) for c in cls.__mro__]
    assert any(code is not None and "_transport" in code.co_names for code in inits), (
        "asyncssh's connection no longer sets _transport: update wire/sshcompat.py"
    )
