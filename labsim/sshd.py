"""A real OpenSSH ``sshd`` playing an analyzer PC on loopback.

The daemon runs in the foreground (``-D -e``) with its own config, host key and
authorized-keys file in a private directory; only key login for the current
user is accepted. Every session (shell, exec, scp, sftp) starts in the
analyzer's data directory, which a small ``ForceCommand`` wrapper arranges:
it changes directory and then runs what the client asked for, so stock
``ssh``, ``scp`` and ``sftp`` behave exactly as against a real analyzer PC.
"""

from __future__ import annotations

import atexit
import getpass
import os
import shlex
import signal
import subprocess
from pathlib import Path
from types import TracebackType

from labsim.datatree import AnalyzerFiles, write_analyzer_tree
from labsim.errors import InstrumentStartError
from labsim.keys import KeyPair, generate_keypair
from labsim.model import Credentials, Instrument
from labsim.net import LOOPBACK, free_port, poll_until, read_banner

SSHD = Path("/usr/sbin/sshd")
SFTP_SERVER = Path("/usr/lib/openssh/sftp-server")
PRIVSEP_DIR = Path("/run/sshd")
START_ATTEMPTS = 5

SESSION_WRAPPER = """#!/bin/sh
# Every session starts in the analyzer's data directory, in a POSIX shell: the
# account's own login shell (bash under sshd) would read the host user's
# ~/.bashrc, whose tools have nothing to do with the analyzer.
cd {data} || exit 1
case "$SSH_ORIGINAL_COMMAND" in
  "") exec /bin/sh -l ;;
  internal-sftp*) exec {sftp} -d {data} ;;
  *) exec /bin/sh -c "$SSH_ORIGINAL_COMMAND" ;;
esac
"""


def openssh_available(sshd: Path = SSHD) -> bool:
    """True when a usable OpenSSH server binary is installed."""
    return sshd.is_file() and os.access(sshd, os.X_OK) and SFTP_SERVER.is_file()


class OpenSSHInstrument:
    """An analyzer PC served by a real ``sshd``; start with ``start()`` or ``with``."""

    def __init__(
        self,
        workdir: Path,
        *,
        name: str = "cobas-c503-1",
        model: str = "Roche cobas c 503",
        department: str = "clinical-chemistry",
        host: str = LOOPBACK,
        sshd: Path = SSHD,
        start_timeout_s: float = 10.0,
        force_command: bool = True,
    ) -> None:
        self.name = name
        self.model = model
        self.department = department
        self.host = host
        self.username = getpass.getuser()
        self._sshd = sshd
        self._start_timeout_s = start_timeout_s
        # False: sshd runs the account's own shell (an analyzer PC's service account)
        self._force_command = force_command
        # <workdir>/<name>/ is what an engineer sees; keys and config stay beside it.
        self._dir = workdir / f".{name}"
        self._etc = self._dir / "etc"
        self.data_dir = workdir / name
        self.log_path = self._dir / "sshd.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._host_key: KeyPair | None = None
        self._client_key: KeyPair | None = None
        self.files: AnalyzerFiles | None = None

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> OpenSSHInstrument:
        """Generate keys, data and config, start sshd and wait until it answers."""
        if not openssh_available(self._sshd):
            raise InstrumentStartError(f"OpenSSH server not installed at {self._sshd}")
        self._etc.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        self.files = write_analyzer_tree(self.data_dir, name=self.name, model=self.model)
        self._host_key = generate_keypair(self._etc / "ssh_host_ed25519_key", f"{self.name}-host")
        self._client_key = generate_keypair(self._dir / "client" / "id_ed25519", "hoshu-injected")
        (self._etc / "authorized_keys").write_text(self._client_key.public_line + "\n")
        wrapper = self._etc / "session"
        wrapper.write_text(
            SESSION_WRAPPER.format(data=shlex.quote(str(self.data_dir)), sftp=SFTP_SERVER)
        )
        wrapper.chmod(0o755)
        last = ""
        for _ in range(START_ATTEMPTS):
            self.port = free_port(self.host)
            last = self._try_start()
            if not last:
                atexit.register(self.stop)
                return self
        raise InstrumentStartError(f"sshd for {self.name} did not start: {last}")

    def _try_start(self) -> str:
        """One start attempt; returns "" on success or why it failed."""
        config = self._etc / "sshd_config"
        config.write_text(self._config_text())
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [str(self._sshd), "-D", "-e", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        proc = self._proc

        def exited() -> str | None:
            code = proc.poll()
            return None if code is None else f"sshd exited with status {code}"

        try:
            poll_until(
                lambda: read_banner(self.host, self.port).startswith(b"SSH-2.0-OpenSSH"),
                deadline_s=self._start_timeout_s,
                what=f"sshd for {self.name} on port {self.port}",
                alive=exited,
            )
        except InstrumentStartError as exc:
            self._kill()
            tail = self.log_path.read_text(errors="replace")[-600:]
            return f"{exc}; log: {tail.strip()}"
        return ""

    def stop(self) -> None:
        """Stop sshd and every session it forked; safe to call twice."""
        atexit.unregister(self.stop)
        self._kill()

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)

    def __enter__(self) -> OpenSSHInstrument:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- what clients need -----------------------------------------------------

    @property
    def host_key(self) -> KeyPair:
        if self._host_key is None:
            raise InstrumentStartError("instrument not started")
        return self._host_key

    @property
    def client_key(self) -> KeyPair:
        """The instrument credential: the key the broker injects for this analyzer."""
        if self._client_key is None:
            raise InstrumentStartError("instrument not started")
        return self._client_key

    @property
    def host_public_key(self) -> str:
        return self.host_key.public_line

    @property
    def host_key_fingerprint(self) -> str:
        return self.host_key.fingerprint

    @property
    def client_key_path(self) -> Path:
        return self.client_key.private_path

    @property
    def client_private_key_pem(self) -> str:
        return self.client_key.private_pem

    def known_hosts_line(self) -> str:
        """A known_hosts entry pinning this instrument's host key."""
        key = " ".join(self.host_public_key.split()[:2])
        return f"[{self.host}]:{self.port} {key}"

    def write_known_hosts(self, path: Path) -> Path:
        path.write_text(self.known_hosts_line() + "\n")
        return path

    @property
    def info(self) -> Instrument:
        return Instrument(
            name=self.name,
            host=self.host,
            ports=(self.port,),
            protocol="ssh",
            department=self.department,
            model=self.model,
            backend="openssh",
            services={"ssh": self.port},
            credentials=Credentials(
                username=self.username,
                private_key_path=self.client_key_path,
                public_key=self.client_key.public_line,
            ),
            host_key=self.host_public_key,
            host_key_fingerprint=self.host_key_fingerprint,
            data_dir=self.data_dir,
        )

    def _config_text(self) -> str:
        lines = [
            f"Port {self.port}",
            f"ListenAddress {self.host}",
            f"HostKey {self._etc / 'ssh_host_ed25519_key'}",
            f"PidFile {self._dir / 'sshd.pid'}",
            f"AuthorizedKeysFile {self._etc / 'authorized_keys'}",
            f"AllowUsers {self.username}",
            "StrictModes no",
            "UsePAM no",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
            "PermitEmptyPasswords no",
            "AllowTcpForwarding no",
            "AllowAgentForwarding no",
            "AllowStreamLocalForwarding no",
            "X11Forwarding no",
            "PermitTunnel no",
            "PermitUserEnvironment no",
            "PrintMotd no",
            "PrintLastLog no",
            "MaxAuthTries 3",
            "LoginGraceTime 20",
            "MaxStartups 30:50:100",
            "LogLevel VERBOSE",
            "Subsystem sftp internal-sftp",
            *([f"ForceCommand {self._etc / 'session'}"] if self._force_command else []),
        ]
        return "\n".join(lines) + "\n"
