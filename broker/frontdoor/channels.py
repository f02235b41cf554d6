"""Channels of one authenticated engineer connection: authorize, record, relay.

Every channel is checked at open time: the instrument must exist, an active
grant must name this engineer, this instrument and this port (the SSH port for
shells, exec, sftp and scp; the destination port for forwards), and file
transfer must be part of the grant for sftp/scp.  Denials reach the engineer
as a message (stderr and exit status 1 for sessions, a channel-open failure
for forwards) and as a ``session.refused``/``forward.refused``/``file.refused``
event.  After opening, the session registry's watcher keeps checking.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import asyncssh

from broker.access.door import Engineer, GrantView, InstrumentTarget
from broker.access.errors import SessionError
from broker.access.permissions import role_allows
from broker.frontdoor.auth import LoginName, valid_instrument_name
from broker.frontdoor.context import Door
from broker.frontdoor.errors import AccessDenied, RawPathRefused, RoleRefused
from broker.frontdoor.forward import open_forward
from broker.frontdoor.raw_paths import forward_refusal, interactive_port, transfer_program
from broker.frontdoor.relay import InstrumentLink, relay_process
from broker.frontdoor.sftp import TransferSession
from broker.live.commands import Command, CommandExtractor, CommandRule, CommandRules, CommandWatch
from broker.live.errors import RecordingError
from broker.live.holds import ALLOWED, ENDED, REFUSED, HeldCommand
from broker.live.recorder import Recording
from broker.live.sessions import LiveSession
from broker.tunnel.connector import Origin

log = logging.getLogger(__name__)
_LOCAL_NAMES = {"localhost", "127.0.0.1", "::1"}


class Channels:
    hold_timeout_s = 120.0  # a held command line not answered by then is refused

    def __init__(
        self,
        door: Door,
        conn: asyncssh.SSHServerConnection,
        engineer: Engineer,
        login: LoginName,
        src: str,
        src_port: int,
    ) -> None:
        self.door = door
        self.conn = conn
        self.engineer = engineer
        self.login = login
        self.src = src
        self.src_port = src_port
        # the broker's SSH connection to an instrument serves every channel of this
        # engineer connection; the gateway sees it under this connection's id
        self.connection_id = door.ids()
        self.link = InstrumentLink(door.connector, Origin(self.connection_id, engineer.username))
        self.open_count = 0

    def close(self) -> None:
        self.link.close()

    # --- shared -----------------------------------------------------------------
    def cols(self, target: str | None, port: int | None = None, **more: Any) -> dict[str, Any]:
        cols: dict[str, Any] = {
            "ActorUsername": self.engineer.username,
            "ActorUserId": self.engineer.user_id,
            "ActorUserType": "engineer",
            "ActorOrganization": self.engineer.organization or None,
            "SrcIpAddr": self.src or None,
            "SrcPortNumber": self.src_port or None,
            "TargetHostname": target,
            "TargetPortNumber": port,
        }
        cols.update(more)
        return cols

    def authorize(
        self, instrument: str | None, port: int | None, *, files: bool = False
    ) -> tuple[InstrumentTarget, GrantView]:
        """The target and grant for this channel, or AccessDenied with the reason.

        First the permission table: the person's roles must allow the path
        (``ssh.session``, ``ssh.files`` or ``ssh.forward``), as every HTTP route
        asks it; then the grant.

        ``port`` None means the instrument's SSH port (shell, exec, sftp, scp: the
        recorded relay); an explicit port is a forward, and a forward to an
        interactive port (sshd, RDP, VNC) is refused whatever the grant says
        (:class:`RawPathRefused`): it would bypass the recorder.
        """
        action = "ssh.files" if files else "ssh.session" if port is None else "ssh.forward"
        if not role_allows(self.engineer.roles, action, self.engineer.org_kind or None):
            raise RoleRefused(f"your account's roles do not allow {action}")
        if instrument is None:
            raise AccessDenied(
                "name an instrument: ssh <user>+<instrument>@<broker> (see hoshu ssh-config)"
            )
        now = self.door.clock()
        policy = self.door.policy
        target = policy.instrument(instrument) if valid_instrument_name(instrument) else None
        if target is None:
            raise AccessDenied(f"unknown instrument {instrument!r}")
        if port is not None and (kind := interactive_port(target, port)) is not None:
            raise RawPathRefused(
                forward_refusal(target, port, kind, self.engineer.username), "interactive_port"
            )
        port = target.ssh_port if port is None else port
        grant = policy.find_grant(self.engineer.user_id, instrument, port, now)
        if grant is None or grant.ends <= now:
            raise AccessDenied(
                f"no active grant for {self.engineer.username} on {instrument} port {port}"
            )
        if port != target.ssh_port and port not in target.ports:
            raise AccessDenied(f"port {port} of {instrument} is not on the hospital's list")
        if files and not grant.file_transfer:
            raise AccessDenied(f"file transfer to and from {instrument} is not part of your grant")
        return target, grant

    async def authorize_off_loop(
        self, instrument: str | None, port: int | None, *, files: bool = False
    ) -> tuple[InstrumentTarget, GrantView]:
        """:meth:`authorize` on the database pool, off the event loop."""
        return await self.door.db(functools.partial(self.authorize, instrument, port, files=files))

    def check_exec(self, target: InstrumentTarget, grant: GrantView, command: str) -> None:
        """Refuse exec of a file-transfer program (RawPathRefused), or return.

        Such a program would move files past the SFTP proxy, where transfers are
        granted, scanned and logged: without file transfer in the grant it is
        refused, and so is a command whose program is only known when it runs;
        with file transfer it is refused too, pointing at sftp/scp.
        """
        found = transfer_program(command)
        if found is None or (found.unresolved and grant.file_transfer):
            return
        name = target.name
        if grant.file_transfer:
            raise RawPathRefused(
                f"{found.program} run as a command would move files past hoshu's checks; use "
                f"sftp or scp to {self.engineer.username}+{name}@<broker>",
                "transfer_by_exec",
            )
        if found.unresolved:
            raise RawPathRefused(
                f"file transfer to and from {name} is not part of your grant, and the program "
                f"this command runs is only known when it runs ({found.program}); name the "
                "program literally",
                "transfer_by_exec",
            )
        raise RawPathRefused(
            f"file transfer to and from {name} is not part of your grant: {found.program} is "
            "refused",
            "transfer_by_exec",
        )

    def reserve(self) -> None:
        if self.open_count >= self.door.options.max_channels:
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                f"too many channels on this connection (at most {self.door.options.max_channels})",
            )
        self.open_count += 1

    def release(self) -> None:
        self.open_count = max(0, self.open_count - 1)

    def live(
        self, sid: str, kind: str, target: InstrumentTarget, grant: GrantView, port: int
    ) -> LiveSession:
        return LiveSession(
            session_id=sid,
            kind=kind,
            user_id=self.engineer.user_id,
            username=self.engineer.username,
            instrument=target.name,
            hospital_id=target.hospital_id,
            grant_id=grant.grant_id,
            port=port,
            started=self.door.clock(),
            src=self.src,
            grant_ends=grant.ends,
        )

    # --- sessions: shell, exec, sftp, scp -------------------------------------
    def session(self) -> asyncssh.SSHServerProcess[bytes]:
        try:
            self.reserve()
        except asyncssh.ChannelOpenError as exc:
            self.door.emit(
                "session.refused",
                EventResult="Failure",
                EventResultDetails="too_many_channels",
                EventMessage=exc.reason,
                details={"kind": "session"},
                **self.cols(self.login.instrument),
            )
            raise
        return TransferSession(self, self._run_process)  # sftp/scp or the relayed process

    async def _run_process(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        try:
            await self._relay(process)
        except Exception:
            log.exception("session failed")
            with contextlib.suppress(Exception):
                process.stderr.write(b"hoshu: internal error; the session was closed\r\n")
                process.exit(1)
        finally:
            self.release()

    async def _relay(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        command = process.command
        kind = "exec" if command else "shell"
        instrument = self.login.instrument
        if process.subsystem:  # sftp never gets here (asyncssh serves it); nothing else exists
            self._refuse(
                process,
                "subsystem",
                instrument,
                f"subsystem {process.subsystem!r} is not available",
                "unsupported",
                None,
            )
            return
        sid = self.door.ids()
        try:
            target, grant = await self.authorize_off_loop(instrument, None)
            if command:
                self.check_exec(target, grant, command)
            term = process.get_terminal_type() or ""
            width, height, _, _ = process.get_terminal_size()
            # in a thread: a recording store may answer over the network (Blob storage)
            rec = await asyncio.to_thread(
                Recording.open,
                self.door.recorder_dir,
                sid,
                width=width or 80,
                height=height or 24,
                env={"TERM": term or "dumb", "SHELL": "/bin/sh"},
                title=f"{self.engineer.username}@{target.name} {command or ''}".strip(),
                opener=self.door.recording_opener,
                max_bytes=self.door.options.max_recording_bytes,
                record_input=bool(command) or target.record_input,
            )
        except RawPathRefused as exc:
            self.door.emit(
                "file.refused",
                EventResult="Failure",
                EventResultDetails=exc.reason,
                EventMessage=str(exc),
                details={"tool": "exec", "command": command},
                **self.cols(instrument),
            )
            process.stderr.write(f"hoshu: {exc}\r\n".encode())
            process.exit(1)
            return
        except SessionError as exc:
            self._refuse(process, kind, instrument, str(exc), exc.reason, command)
            return
        rec.exact = bool(command)  # exec: stdin and stdout byte for byte
        try:
            conn = await self.link.ssh(target)
        except SessionError as exc:
            (await asyncio.to_thread(rec.close)).path.unlink(missing_ok=True)
            self._refuse(process, kind, instrument, str(exc), exc.reason, command)
            return
        live = self.live(sid, kind, target, grant, target.ssh_port)
        live.recording = rec.path.name
        live.recorder = rec
        loop = asyncio.get_running_loop()
        stop: asyncio.Future[str] = loop.create_future()

        def terminate(reason: str) -> None:
            if not stop.done():
                stop.set_result(reason)

        def warn(text: str) -> None:
            process.stderr.write(f"\r\n*** {text} ***\r\n".encode())

        live.on_terminate = terminate
        live.on_warning = warn
        cols = self.cols(
            target.name,
            target.ssh_port,
            TargetSessionId=sid,
            HospitalId=target.hospital_id or None,
            GatewayId=target.gateway_id or None,
            GrantId=grant.grant_id,
            TargetUsername=target.username,
            NetworkApplicationProtocol="ssh",
            Emergency=grant.emergency or None,
        )
        self.door.emit(
            "session.started",
            EventMessage=f"{kind} on {target.name}",
            details={
                "kind": kind,
                "command": command or None,
                "recording": rec.path.name,
                "term": term or None,
            },
            **cols,
        )
        if command:
            self.door.emit("session.command", details={"command": command}, **cols)
        watch = (
            self._command_watch(target, rec, live, term, width, height, cols)
            if not command
            else None
        )
        self.door.sessions.add(live)
        started = loop.time()
        try:  # the session leaves the registry once its end is told and written
            failure: list[Exception] = []
            try:
                status, reason = await relay_process(
                    process,
                    conn,
                    rec,
                    live,
                    stop,
                    failure.append,
                    lambda terminated: self.link.release(target.name, close_if_idle=terminated),
                    watch,
                )
            except (OSError, asyncssh.Error) as exc:
                status, reason = None, "instrument_error"
                failure.append(exc)
            finally:
                if watch is not None:
                    await watch.close()

            told: set[str] = set()

            def tell(msg: str) -> None:
                if msg not in told:
                    told.add(msg)
                    with contextlib.suppress(Exception):
                        process.stderr.write(f"\r\nhoshu: {msg}\r\n".encode())

            # the engineer is told at once, before the recording is closed (which may
            # take a while on a busy store; a draining broker closes the connection
            # at the end of its grace)
            if reason != "exited":
                tell(str(failure[0]) if failure else f"session ended: {reason.replace('_', ' ')}")
            summary = None
            try:  # in a thread: the store may append the rest and seal over the network
                summary = await asyncio.to_thread(rec.close)
            except RecordingError as exc:
                failure.append(exc)
                reason = "recording_failed"
                tell(str(exc))
            if summary is None:
                summary = rec.close()
            self.door.sessions.emit(
                "session.ended",
                EventResultDetails=reason,
                EventResult="Success" if reason == "exited" else "Partial",
                NetworkDuration=int((loop.time() - started) * 1000),
                RecordingSize=summary.size,
                RecordingSHA256=summary.sha256,
                details={"kind": kind, "exit_status": status, "recording": summary.path.name},
                **cols,
            )
            process.exit(status if status is not None else 255)
        finally:
            self.door.sessions.remove(sid)

    def _command_watch(
        self,
        target: InstrumentTarget,
        rec: Recording,
        live: LiveSession,
        term: str,
        width: int,
        height: int,
        cols: dict[str, Any],
    ) -> CommandWatch | None:
        """Commands typed in a shell with a terminal become ``session.command`` events;
        the hospital's command rules judge each line (None: no terminal, nothing to read)."""
        if not term:
            return None
        try:
            rules = CommandRules.parse(target.command_rules)
        except (ValueError, KeyError) as exc:
            log.warning("the command rules of %s are unusable: %s", target.hospital_id, exc)
            rules = CommandRules(
                (CommandRule("deny", "", "the hospital's command rules are unusable"),)
            )

        def command(cmd: Command) -> None:
            self.door.emit(
                "session.command",
                details={
                    "command": cmd.text,
                    "source": "shell",
                    "prompt": cmd.prompt or None,
                    "cwd": cmd.cwd,
                    "offset": cmd.offset,
                    "truncated": cmd.truncated or None,
                },
                **cols,
            )

        def refused(rule: CommandRule, line: str) -> bytes:
            held = rule.action == "hold"
            self.door.emit(
                "session.command_denied",
                EventResult="Failure",
                EventResultDetails="command_held" if held else "command_denied",
                EventMessage=f"command refused on {target.name}: {rule.reason or rule.pattern}",
                details={
                    "command": line,
                    "pattern": rule.pattern,
                    "reason": rule.reason or None,
                    "offset": rec.elapsed(),
                },
                **cols,
            )
            self.door.emit(
                "alert.raised",
                details={
                    "alert": "command_denied",
                    "reason": f"{self.engineer.username} typed a command the hospital does not "
                    f"allow on {target.name} ({rule.reason or rule.pattern}); it was not sent",
                },
                **cols,
            )
            why = rule.reason or "it matches a rule of the hospital"
            what = "was held and not allowed" if held else "is not allowed"
            text = f"this command {what} on {target.name} ({why}); it was not sent"
            return f"\r\n*** hoshu: {text} ***\r\n".encode()

        async def held(rule: CommandRule, line: str, tell: Callable[[bytes], None]) -> bool:
            timeout = self.hold_timeout_s
            now = self.door.clock()
            hold = HeldCommand(
                live.session_id,
                target.name,
                target.hospital_id,
                self.engineer.username,
                line,
                rule.reason,
                rule.pattern,
                now,
                now + timedelta(seconds=timeout),
                user_id=live.user_id,
                board=self.door.holds,  # several replicas: shared through the database
            )
            about = {"command": line, "hold": hold.hold_id}
            self.door.emit(
                "session.command_held",
                EventMessage=f"command held on {target.name} for an approver",
                details={
                    **about,
                    "pattern": rule.pattern,
                    "reason": rule.reason or None,
                    "timeout_s": timeout,
                },
                **cols,
            )
            why = f" ({rule.reason})" if rule.reason else ""
            tell(
                f"\r\n*** hoshu: this command waits for an approver of the hospital{why}: "
                f"hold {hold.hold_id}, at most {timeout:g} s ***\r\n".encode()
            )
            live.hold = hold
            decision, by = ENDED, ""
            try:
                decision, by = await hold.wait(timeout)  # no answer in time: TIMED_OUT
            finally:
                live.hold = None
                self.door.emit(
                    "session.command_released",
                    EventResult="Success" if decision == ALLOWED else "Failure",
                    EventResultDetails=decision,
                    details={**about, "decision": decision, "by": by or None},
                    **cols,
                )
            if decision == ALLOWED:
                tell(f"*** hoshu: allowed by {by}; sent ***\r\n".encode())
                return True
            text = f"refused by {by}" if decision == REFUSED else "no answer in time"
            tell(f"*** hoshu: {text}; the command was not sent ***\r\n".encode())
            return False

        watch = CommandWatch(CommandExtractor(width, height, rec.elapsed), command, rules)
        watch.on_refused = refused
        watch.on_held = held
        watch.start()
        return watch

    def _refuse(
        self,
        process: asyncssh.SSHServerProcess[bytes],
        kind: str,
        instrument: str | None,
        message: str,
        reason: str,
        command: str | None,
    ) -> None:
        self.door.emit(
            "session.refused",
            EventResult="Failure",
            EventResultDetails=reason,
            EventMessage=message,
            details={"kind": kind, "command": command or None},
            **self.cols(instrument),
        )
        process.stderr.write(f"hoshu: {message}\r\n".encode())
        process.exit(1)

    # --- port forwards --------------------------------------------------------
    def forward(self, dest_host: str, dest_port: int) -> Any:
        try:
            self.reserve()
        except asyncssh.ChannelOpenError as exc:
            self.door.emit(
                "forward.refused",
                EventResult="Failure",
                EventResultDetails="too_many_channels",
                EventMessage=exc.reason,
                **self.cols(self.forward_target(dest_host), dest_port),
            )
            raise
        return open_forward(self, dest_host, dest_port)

    def forward_target(self, dest_host: str) -> str | None:
        """``localhost`` means the instrument named at login; else an instrument name."""
        if dest_host.lower() in _LOCAL_NAMES or dest_host == self.login.instrument:
            return self.login.instrument
        name = dest_host.lower()
        return name.removesuffix(".hoshu")
