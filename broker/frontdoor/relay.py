"""The protocol break: the broker's own SSH connection to the instrument, and the
recorded relay of shells and exec commands over it.

The engineer's SSH session ends at the broker.  :class:`InstrumentLink` opens
(once per engineer connection and instrument) the broker's own SSH connection
through the :class:`~broker.access.door.InstrumentConnector`, logging in with the
credential held for the instrument and verifying the instrument's host key
against the fingerprint the hospital accepted.  :func:`relay_process` then
copies bytes both ways in large chunks, writing every byte of input, output
and every resize into the asciicast recording.

In a shell with a terminal, a :class:`~broker.live.commands.CommandWatch` reads
the commands typed beside the relay (never in its way: it only queues); with the
hospital's command rules, each Enter waits until the line it submits is judged,
and a refused line is erased instead of sent (docs/auditor.md).

When the broker ends a running command (revocation, expiry, an approver), the
engineer's channel closes at once and the command is ended on the instrument
in the background: the SSH ``signal`` request TERM, KILL after
:data:`TERM_GRACE_S`, then the channel is closed, and the broker's connection to
the instrument too once no other channel of the engineer connection uses it.
OpenSSH's sshd honours ``signal`` (7.8 and later) except for a forced command
(``ForceCommand``, ``command=``) or a subsystem: there a non-terminal command
keeps running until it writes or ends (docs/engineer.md).

Failures map to :mod:`broker.frontdoor.errors`; their text is what the engineer sees.
The credential is never part of a message, an event or a log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import asyncssh

from broker.access.door import InstrumentTarget
from broker.live.commands import ENTER_BYTES, CommandWatch
from broker.live.recorder import Recording
from broker.live.sessions import LiveSession
from broker.tunnel.connector import InstrumentConnector, Origin
from broker.tunnel.errors import InstrumentError

log = logging.getLogger(__name__)
CHUNK = 256 * 1024
# The instrument's sshd may send packets this large: fewer packets to decrypt,
# deliver and record per byte of output.
MAX_PKTSIZE = 128 * 1024
CONNECT_TIMEOUT_S = 15.0
TERM_GRACE_S = 3.0  # TERM, then this long, then KILL, then this long, then close
# AES-GCM runs in OpenSSL through cryptography; asyncssh's chacha20-poly1305 costs
# more per packet in Python, so the broker's own connections prefer GCM.
ENCRYPTION_ALGS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes256-ctr",
)


class _HostKeyCheck(asyncssh.SSHClient):
    """Accepts exactly the instrument host key the hospital accepted."""

    def __init__(self, fingerprint: str) -> None:
        self._fp = fingerprint

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        return bool(key.get_fingerprint("sha256") == self._fp)


def client_options(target: InstrumentTarget) -> asyncssh.SSHClientConnectionOptions:
    """asyncssh options for logging in to ``target`` with its injected credential."""
    if not target.host_key_fingerprint:
        raise InstrumentError(
            f"the host key of {target.name} has not been accepted by the hospital yet"
        )
    fp = target.host_key_fingerprint
    auth: dict[str, Any]
    if target.credential_is_key:
        try:
            key = asyncssh.import_private_key(target.credential)
        except (asyncssh.KeyImportError, ValueError) as exc:
            raise InstrumentError(f"the credential held for {target.name} is unusable") from exc
        auth = {"client_keys": [key], "password": None, "kbdint_auth": False}
    else:
        auth = {"client_keys": [], "password": target.credential}
    return asyncssh.SSHClientConnectionOptions(
        username=target.username,
        known_hosts=([], [], []),
        client_factory=lambda: _HostKeyCheck(fp),
        agent_path=None,
        config=[],
        connect_timeout=CONNECT_TIMEOUT_S,
        login_timeout=CONNECT_TIMEOUT_S,
        keepalive_interval=30,
        window=8 * 1024 * 1024,
        max_pktsize=MAX_PKTSIZE,
        encryption_algs=list(ENCRYPTION_ALGS),
        compression_algs=None,
        **auth,
    )


class InstrumentLink:
    """The broker's SSH connections to instruments for one engineer connection."""

    def __init__(self, connector: InstrumentConnector, origin: Origin) -> None:
        self._connector = connector
        self._origin = origin
        self._conns: dict[str, asyncssh.SSHClientConnection] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        # channels using each connection; one that never calls release() keeps it open
        self._users: dict[str, int] = {}

    async def ssh(self, target: InstrumentTarget) -> asyncssh.SSHClientConnection:
        """The connection to ``target`` (opened once); each call counts as one user."""
        lock = self._locks.setdefault(target.name, asyncio.Lock())
        async with lock:
            conn = self._conns.get(target.name)
            if conn is None or conn.is_closed():
                conn = await self._open(target)
                self._conns[target.name] = conn
                self._users[target.name] = 0
            self._users[target.name] += 1
            return conn

    def release(self, name: str, *, close_if_idle: bool) -> None:
        """One user of the connection to ``name`` is done; with ``close_if_idle`` the
        connection closes when that was the last one (a terminated session)."""
        users = self._users.get(name, 0) - 1
        self._users[name] = max(0, users)
        if users <= 0 and close_if_idle:
            conn = self._conns.pop(name, None)
            self._users.pop(name, None)
            if conn is not None:
                conn.close()

    async def _open(self, target: InstrumentTarget) -> asyncssh.SSHClientConnection:
        # the connector translates every failure (broker.tunnel.errors)
        return await self._connector.connect_ssh(target, client_options(target), self._origin)

    async def sftp(self, target: InstrumentTarget) -> asyncssh.SFTPClient:
        """An SFTP client on the connection to ``target`` (counts as one user)."""
        conn = await self.ssh(target)
        try:
            return await conn.start_sftp_client(path_encoding=None)
        except (OSError, asyncssh.Error) as exc:
            self.release(target.name, close_if_idle=False)
            raise InstrumentError(f"{target.name} refused SFTP") from exc

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()
        self._users.clear()


_ENDING: set[asyncio.Future[None]] = set()  # commands being ended in the background


async def _closed_within(upstream: asyncssh.SSHClientProcess[bytes], seconds: float) -> bool:
    try:
        await asyncio.wait_for(asyncio.shield(upstream.wait_closed()), seconds)
    except TimeoutError:
        return False
    return True


async def end_command(
    upstream: asyncssh.SSHClientProcess[bytes], grace_s: float, done: Callable[[], None]
) -> None:
    """End a command on the instrument: TERM, KILL after ``grace_s``, close; then ``done``."""
    try:
        for sig in ("TERM", "KILL"):
            with contextlib.suppress(OSError, asyncssh.Error):
                upstream.send_signal(sig)
            if await _closed_within(upstream, grace_s):
                break
        else:
            log.warning(
                "a terminated command did not end after TERM and KILL; the "
                "instrument's sshd may refuse signals (forced command, root login)"
            )
        upstream.close()
    finally:
        done()


def end_in_background(
    upstream: asyncssh.SSHClientProcess[bytes], done: Callable[[], None]
) -> asyncio.Future[None]:
    task = asyncio.ensure_future(end_command(upstream, TERM_GRACE_S, done))
    _ENDING.add(task)
    task.add_done_callback(_ENDING.discard)
    return task


async def _copy_out(
    src: asyncssh.SSHReader[bytes],
    dst: asyncssh.SSHWriter[bytes],
    rec: Recording | None,
    live: LiveSession,
    watch: CommandWatch | None = None,
) -> None:
    while data := await src.read(CHUNK):
        if rec is not None:
            rec.output(data)
        if watch is not None:
            watch.output(data)
        if live.followers:
            live.publish(data)
        dst.write(data)
        await dst.drain()


async def _copy_in(
    process: asyncssh.SSHServerProcess[bytes],
    upstream: asyncssh.SSHClientProcess[bytes],
    rec: Recording | None,
    watch: CommandWatch | None = None,
) -> None:
    while True:
        try:
            data = await process.stdin.read(CHUNK)
        except asyncssh.TerminalSizeChanged as exc:
            upstream.change_terminal_size(exc.width, exc.height)
            if rec is not None:
                rec.resize(exc.width, exc.height)
            if watch is not None:
                watch.resize(exc.width, exc.height)
            continue
        except asyncssh.BreakReceived as exc:
            upstream.send_break(exc.msec)
            continue
        except asyncssh.SignalReceived as exc:
            upstream.send_signal(exc.signal)
            continue
        if not data:
            upstream.stdin.write_eof()
            return
        if watch is not None and watch.rules and any(k in data for k in ENTER_BYTES):
            await _judged_input(data, process, upstream, rec, watch)
            continue
        if watch is not None:
            watch.input(data)
        if rec is not None:
            rec.input(data)
        upstream.stdin.write(data)
        await upstream.stdin.drain()


# what the broker types for a refused line: to its end, erase it (readline and a plain
# terminal alike), then an empty Enter so the shell shows a fresh prompt
_ERASE_LINE = b"\x05\x15"


async def _judged_input(
    data: bytes,
    process: asyncssh.SSHServerProcess[bytes],
    upstream: asyncssh.SSHClientProcess[bytes],
    rec: Recording | None,
    watch: CommandWatch,
) -> None:
    """Input with an Enter, under the hospital's command rules: each Enter is sent
    only once the line it submits matches no rule, or a hold rule and an approver
    allowed it; any other matching line is erased and the engineer told why (the
    rest of the chunk, typed ahead, is dropped)."""

    def tell(notice: bytes) -> None:
        """Show the engineer a notice of the broker's (recorded as output)."""
        if notice:
            if rec is not None:
                rec.output(notice)
            process.stdout.write(notice)

    async def send(part: bytes, *, typed: bool = True) -> None:
        if not part:
            return
        watch.input(part)
        if rec is not None and typed:
            rec.input(part)
        upstream.stdin.write(part)
        await upstream.stdin.drain()

    while data:
        cut = min((i for i in (data.find(k) for k in ENTER_BYTES) if i >= 0), default=-1)
        if cut < 0:
            await send(data)
            return
        await send(data[:cut])
        rule, line = await watch.judge()
        if rule is not None and rule.action == "hold" and watch.on_held is not None:
            # the Enter waits for a hospital approver (the engineer's keys wait with it)
            if await watch.on_held(rule, line, tell):
                rule = None
        if rule is None:
            await send(data[cut : cut + 1])
            data = data[cut + 1 :]
            continue
        await send(_ERASE_LINE, typed=False)
        await watch.judge()  # let the shell redraw the erased line before the notice
        tell(watch.on_refused(rule, line))
        await send(b"\r", typed=False)
        return


async def relay_process(
    process: asyncssh.SSHServerProcess[bytes],
    conn: asyncssh.SSHClientConnection,
    rec: Recording | None,
    live: LiveSession,
    stop: asyncio.Future[str],
    on_flush_error: Callable[[Exception], None],
    on_upstream_done: Callable[[bool], None] = lambda _terminated: None,
    watch: CommandWatch | None = None,
) -> tuple[int | None, str]:
    """Relay one shell or exec; return (exit status, end reason).

    Ends when the instrument side exits, when ``stop`` resolves (termination:
    its value is the reason), or when the recording fails.  In the last two
    cases it returns at once and the command is ended on the instrument in the
    background (:func:`end_command`).  ``on_upstream_done(terminated)`` is
    called once the instrument's channel is closed.
    """
    term = process.get_terminal_type()
    width, height, _, _ = process.get_terminal_size()
    try:
        upstream = await conn.create_process(
            process.command or None,
            term_type=term,
            term_size=(width, height) if term else None,
            encoding=None,
        )
    except BaseException:
        on_upstream_done(True)
        raise
    tasks = [
        asyncio.ensure_future(_copy_out(upstream.stdout, process.stdout, rec, live, watch)),
        asyncio.ensure_future(_copy_out(upstream.stderr, process.stderr, rec, live, watch)),
    ]
    pump_in = asyncio.ensure_future(_copy_in(process, upstream, rec, watch))
    outputs: asyncio.Future[Any] = asyncio.gather(*tasks)
    reason = "exited"
    try:
        waiting: set[asyncio.Future[Any]] = {outputs, stop, pump_in}
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        while pump_in in done and not pump_in.exception() and not stop.done():
            waiting = {outputs, stop}
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        for t in (outputs, pump_in):
            if t.done() and not t.cancelled() and t.exception() is not None:
                exc = t.exception()
                assert isinstance(exc, Exception)
                on_flush_error(exc)
                reason = getattr(exc, "reason", "relay_error")
                break
        if stop.done():
            reason = stop.result()
    finally:
        for t in (*tasks, pump_in):
            t.cancel()
        with contextlib.suppress(BaseException):
            await outputs
        with contextlib.suppress(BaseException):
            await pump_in
    if reason == "exited":
        try:
            await upstream.wait_closed()
        finally:
            on_upstream_done(False)
        return upstream.exit_status, reason
    end_in_background(upstream, lambda: on_upstream_done(True))
    return None, reason
