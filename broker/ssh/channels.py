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
import logging
from typing import TYPE_CHECKING, Any, cast

import asyncssh

from broker.ssh.auth import LoginName, valid_instrument_name
from broker.ssh.errors import AccessDenied, FrontDoorError, RecordingError
from broker.ssh.ports import Engineer, GrantView, InstrumentTarget, Origin
from broker.ssh.recorder import Recording
from broker.ssh.relay import InstrumentLink, relay_process
from broker.ssh.sessions import LiveSession

if TYPE_CHECKING:
    from broker.ssh.frontdoor import FrontDoor

log = logging.getLogger(__name__)
_LOCAL_NAMES = {"localhost", "127.0.0.1", "::1"}


class Channels:
    def __init__(
        self,
        door: FrontDoor,
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
        """The target and grant for this channel, or AccessDenied with the reason."""
        if instrument is None:
            raise AccessDenied(
                "name an instrument: ssh <user>+<instrument>@<broker> (see hoshu ssh-config)"
            )
        now = self.door.clock()
        policy = self.door.policy
        target = policy.instrument(instrument) if valid_instrument_name(instrument) else None
        if target is None:
            raise AccessDenied(f"unknown instrument {instrument!r}")
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

    def reserve(self) -> None:
        if self.open_count >= self.door.options.max_channels:
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                f"too many channels on this connection (at most "
                f"{self.door.options.max_channels})",
            )
        self.open_count += 1

    def release(self) -> None:
        self.open_count = max(0, self.open_count - 1)

    def live(
        self, sid: str, kind: str, target: InstrumentTarget, grant: GrantView, port: int
    ) -> LiveSession:
        return LiveSession(
            session_id=sid, kind=kind, user_id=self.engineer.user_id,
            username=self.engineer.username, instrument=target.name,
            hospital_id=target.hospital_id, grant_id=grant.grant_id, port=port,
            started=self.door.clock(), src=self.src, grant_ends=grant.ends,
        )

    # --- sessions: shell, exec, sftp, scp -------------------------------------
    def session(self) -> asyncssh.SSHServerProcess[bytes]:
        try:
            self.reserve()
        except asyncssh.ChannelOpenError as exc:
            self.door.emit("session.refused", EventResult="Failure",
                           EventResultDetails="too_many_channels", EventMessage=exc.reason,
                           details={"kind": "session"}, **self.cols(self.login.instrument))
            raise
        from broker.ssh.sftp import make_sftp_server

        return asyncssh.SSHServerProcess(
            self._run_process, lambda chan: make_sftp_server(self, cast(Any, chan)), 3, True
        )

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
            self._refuse(process, "subsystem", instrument,
                         f"subsystem {process.subsystem!r} is not available", "unsupported",
                         None)
            return
        sid = self.door.ids()
        try:
            target, grant = self.authorize(instrument, None)
            term = process.get_terminal_type() or ""
            width, height, _, _ = process.get_terminal_size()
            rec = Recording.open(
                self.door.recorder_dir, sid, width=width or 80, height=height or 24,
                env={"TERM": term or "dumb", "SHELL": "/bin/sh"},
                title=f"{self.engineer.username}@{target.name} {command or ''}".strip(),
                opener=self.door.recording_opener,
            )
        except FrontDoorError as exc:
            self._refuse(process, kind, instrument, str(exc), exc.reason, command)
            return
        try:
            conn = await self.link.ssh(target)
        except FrontDoorError as exc:
            rec.close().path.unlink(missing_ok=True)
            self._refuse(process, kind, instrument, str(exc), exc.reason, command)
            return
        live = self.live(sid, kind, target, grant, target.ssh_port)
        live.recording = rec.path.name
        loop = asyncio.get_running_loop()
        stop: asyncio.Future[str] = loop.create_future()

        def terminate(reason: str) -> None:
            if not stop.done():
                stop.set_result(reason)

        def warn(text: str) -> None:
            process.stderr.write(f"\r\n*** {text} ***\r\n".encode())

        live.on_terminate = terminate
        live.on_warning = warn
        cols = self.cols(target.name, target.ssh_port, TargetSessionId=sid,
                         HospitalId=target.hospital_id or None,
                         GatewayId=target.gateway_id or None, GrantId=grant.grant_id,
                         TargetUsername=target.username, NetworkApplicationProtocol="ssh",
                         Emergency=grant.emergency or None)
        self.door.emit("session.started", EventMessage=f"{kind} on {target.name}",
                       details={"kind": kind, "command": command or None,
                                "recording": rec.path.name, "term": term or None}, **cols)
        if command:
            self.door.emit("session.command", details={"command": command}, **cols)
        self.door.sessions.add(live)
        started = loop.time()
        failure: list[Exception] = []
        try:
            status, reason = await relay_process(
                process, conn, rec, live, stop, failure.append
            )
        except (OSError, asyncssh.Error) as exc:
            status, reason = None, "instrument_error"
            failure.append(exc)
        finally:
            self.door.sessions.remove(sid)
        summary = None
        try:
            summary = rec.close()
        except RecordingError as exc:
            failure.append(exc)
            reason = "recording_failed"
        if reason != "exited":
            msg = str(failure[0]) if failure else f"session ended: {reason.replace('_', ' ')}"
            with contextlib.suppress(Exception):
                process.stderr.write(f"\r\nhoshu: {msg}\r\n".encode())
        if summary is None:
            summary = rec.close()
        self.door.emit(
            "session.ended", EventResultDetails=reason,
            EventResult="Success" if reason == "exited" else "Partial",
            NetworkDuration=int((loop.time() - started) * 1000),
            RecordingSize=summary.size, RecordingSHA256=summary.sha256,
            details={"kind": kind, "exit_status": status, "recording": summary.path.name},
            **cols,
        )
        process.exit(status if status is not None else 255)

    def _refuse(
        self,
        process: asyncssh.SSHServerProcess[bytes],
        kind: str,
        instrument: str | None,
        message: str,
        reason: str,
        command: str | None,
    ) -> None:
        self.door.emit("session.refused", EventResult="Failure", EventResultDetails=reason,
                       EventMessage=message, details={"kind": kind, "command": command or None},
                       **self.cols(instrument))
        process.stderr.write(f"hoshu: {message}\r\n".encode())
        process.exit(1)

    # --- port forwards --------------------------------------------------------
    def forward(self, dest_host: str, dest_port: int) -> Any:
        try:
            self.reserve()
        except asyncssh.ChannelOpenError as exc:
            self.door.emit("forward.refused", EventResult="Failure",
                           EventResultDetails="too_many_channels", EventMessage=exc.reason,
                           **self.cols(self.forward_target(dest_host), dest_port))
            raise
        from broker.ssh.forward import open_forward

        return open_forward(self, dest_host, dest_port)

    def forward_target(self, dest_host: str) -> str | None:
        """``localhost`` means the instrument named at login; else an instrument name."""
        if dest_host.lower() in _LOCAL_NAMES or dest_host == self.login.instrument:
            return self.login.instrument
        name = dest_host.lower()
        return name.removesuffix(".hoshu")
