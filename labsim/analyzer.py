"""An SSH instrument built on asyncssh: a LAS controller or a fallback analyzer PC.

Logins: the configured user with either the instrument password or the
instrument's client key; anything else is refused. A session is either an
exec request (one console command, its exit status returned) or an
interactive console with a prompt. With a pty the typed characters are echoed
as they arrive (asyncssh's line editor), so keystroke latency through the
broker can be measured; window-size changes are tracked and shown by
``status``. Input is read in bounded chunks: a line longer than
``max_line`` closes the session, and a session idle for ``idle_timeout_s``
is closed.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from labsim.datatree import AnalyzerFiles, write_analyzer_tree
from labsim.errors import InstrumentStartError
from labsim.keys import KeyPair, generate_keypair, write_secret
from labsim.model import Credentials, Instrument
from labsim.net import LOOPBACK
from labsim.shell import AnalyzerConsole

READ_CHUNK = 4096


@dataclass(frozen=True)
class AnalyzerSettings:
    """How one asyncssh instrument presents itself and what it tolerates."""

    name: str = "las-line-a"
    model: str = "Inpeco FlexLab LAS controller"
    department: str = "laboratory-automation"
    username: str = "service"
    host: str = LOOPBACK
    port: int = 0
    idle_timeout_s: float = 300.0
    login_timeout_s: float = 20.0
    max_line: int = 1024
    max_connections: int = 32


class _AuthServer(asyncssh.SSHServer):
    """Per-connection auth hooks: deny unless user and password/key match exactly."""

    def __init__(self, owner: AnalyzerServer) -> None:
        self._owner = owner
        self._counted = False

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        if self._owner.connections >= self._owner.settings.max_connections:
            conn.close()
            return
        self._owner.connections += 1
        self._counted = True

    def connection_lost(self, exc: Exception | None) -> None:
        if self._counted:
            self._owner.connections -= 1
            self._counted = False

    def begin_auth(self, username: str) -> bool:
        return True  # authentication always required

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        return self._owner.check_password(username, password)

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return self._owner.check_key(username, key)


class AnalyzerServer:
    """The asyncssh instrument; ``await start()`` then ``await close()``."""

    def __init__(
        self,
        workdir: Path,
        settings: AnalyzerSettings | None = None,
        *,
        password: str | None = None,
    ) -> None:
        self.settings = settings or AnalyzerSettings()
        # <workdir>/<name>/ holds the analyzer's files; keys and secrets stay beside it.
        self._dir = workdir / f".{self.settings.name}"
        self.data_dir = workdir / self.settings.name
        self._password = password or secrets.token_urlsafe(18)
        self.password_path = self._dir / "client" / "password"
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._host_key: KeyPair | None = None
        self._client_key: KeyPair | None = None
        self._allowed: asyncssh.SSHKey | None = None
        self.files: AnalyzerFiles | None = None
        self.port = 0
        self.connections = 0

    async def start(self) -> AnalyzerServer:
        s = self.settings
        self.files = write_analyzer_tree(self.data_dir, name=s.name, model=s.model)
        self._host_key = generate_keypair(
            self._dir / "etc" / "ssh_host_ed25519_key", f"{s.name}-host"
        )
        self._client_key = generate_keypair(self._dir / "client" / "id_ed25519", "hoshu-injected")
        self._allowed = asyncssh.import_public_key(self._client_key.public_line)
        write_secret(self.password_path, self._password)
        try:
            self._acceptor = await asyncssh.create_server(
                lambda: _AuthServer(self),
                s.host,
                s.port,
                server_host_keys=[str(self._host_key.private_path)],
                process_factory=self._session,
                login_timeout=s.login_timeout_s,
                line_editor=True,
                max_line_length=s.max_line,
                sftp_factory=None,
                allow_scp=False,
                agent_forwarding=False,
                x11_forwarding=False,
            )
        except OSError as exc:
            raise InstrumentStartError(
                f"{s.name}: cannot listen on {s.host}:{s.port}: {exc}"
            ) from exc
        self.port = int(self._acceptor.get_port())
        return self

    async def close(self) -> None:
        acceptor, self._acceptor = self._acceptor, None
        if acceptor is not None:
            acceptor.close()
            await acceptor.wait_closed()

    # -- auth checks (deny by default) ------------------------------------------

    def check_password(self, username: str, password: str) -> bool:
        user_ok = hmac.compare_digest(username.encode(), self.settings.username.encode())
        pass_ok = hmac.compare_digest(password.encode(), self._password.encode())
        return user_ok and pass_ok

    def check_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        if self._allowed is None or username != self.settings.username:
            return False
        return bool(key.public_data == self._allowed.public_data)

    # -- sessions -----------------------------------------------------------------

    def _console(self) -> AnalyzerConsole:
        assert self.files is not None
        return AnalyzerConsole(name=self.settings.name, model=self.settings.model, files=self.files)

    async def _session(self, process: asyncssh.SSHServerProcess[str]) -> None:
        console = self._console()
        size = process.term_size
        console.term_size = (size[0], size[1])
        try:
            if process.command is not None:
                reply = console.run(process.command[: self.settings.max_line])
                if reply.text:
                    process.stdout.write(reply.text + "\n")
                process.exit(reply.status)
                return
            await self._interactive(process, console)
        except (asyncssh.Error, OSError):
            process.close()

    async def _interactive(
        self, process: asyncssh.SSHServerProcess[str], console: AnalyzerConsole
    ) -> None:
        out = process.stdout
        out.write(console.banner() + "\n")
        reader = _LineReader(process, console, self.settings)
        while True:
            out.write(console.prompt)
            line = await reader.readline()
            if line is None:
                process.exit(0)
                return
            reply = console.run(line)
            if reply.text:
                out.write(reply.text + "\n")
            if reply.close:
                process.exit(0)
                return

    # -- what clients need ----------------------------------------------------------

    @property
    def host_key(self) -> KeyPair:
        if self._host_key is None:
            raise InstrumentStartError("instrument not started")
        return self._host_key

    @property
    def client_key(self) -> KeyPair:
        if self._client_key is None:
            raise InstrumentStartError("instrument not started")
        return self._client_key

    @property
    def password(self) -> str:
        return self._password

    @property
    def info(self) -> Instrument:
        s = self.settings
        return Instrument(
            name=s.name,
            host=s.host,
            ports=(self.port,),
            protocol="ssh",
            department=s.department,
            model=s.model,
            backend="asyncssh",
            services={"ssh": self.port},
            credentials=Credentials(
                username=s.username,
                private_key_path=self.client_key.private_path,
                public_key=self.client_key.public_line,
                password_path=self.password_path,
            ),
            host_key=self.host_key.public_line,
            host_key_fingerprint=self.host_key.fingerprint,
            data_dir=self.data_dir,
        )


class _LineReader:
    """Reads console lines in bounded chunks, with an idle timeout."""

    def __init__(
        self,
        process: asyncssh.SSHServerProcess[str],
        console: AnalyzerConsole,
        settings: AnalyzerSettings,
    ) -> None:
        self._process = process
        self._console = console
        self._settings = settings
        self._buf = ""

    async def readline(self) -> str | None:
        """The next line; None on EOF, idle timeout or an over-long line."""
        out = self._process.stdout
        while "\n" not in self._buf:
            if len(self._buf) > self._settings.max_line:
                out.write(f"\ninput line exceeds {self._settings.max_line} characters\n")
                return None
            try:
                chunk = await asyncio.wait_for(
                    self._process.stdin.read(READ_CHUNK), self._settings.idle_timeout_s
                )
            except asyncssh.TerminalSizeChanged as exc:
                self._console.term_size = (exc.width, exc.height)
                continue
            except (asyncssh.BreakReceived, asyncssh.SignalReceived):
                self._buf = ""  # like ^C at a prompt: drop the partial line
                if self._process.term_type:  # a pty: asyncssh's line editor holds input
                    clear = getattr(self._process.channel, "clear_input", None)
                    if clear is not None:
                        clear()
                out.write("^C\n" + self._console.prompt)
                continue
            except TimeoutError:
                out.write("\nidle timeout, session closed\n")
                return None
            if not chunk:
                if self._buf:
                    line, self._buf = self._buf, ""
                    return line
                return None
            self._buf += chunk.replace("\r\n", "\n").replace("\r", "\n")
        line, _, self._buf = self._buf.partition("\n")
        return line
