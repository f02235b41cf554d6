"""The all-in-one demo: a broker, one hospital gateway and a simulated laboratory.

Everything runs on loopback and talks through the same public interfaces a
real deployment uses: the broker is ``hoshu serve``, the gateway is
``hoshu-gateway run`` (enrolled with a one-time token), and the set-up is done
with the ``hoshu`` CLI as the platform admin would.  Only the simulated
laboratory runs inside this process.

State lives in ``.hoshu-demo/`` (recreated at every start); ``demo.json`` there
describes it for scripts: ports, users, passwords, TOTP secrets, key paths,
instrument names.  Passwords and TOTP secrets are shown because this is a demo
on loopback; a real deployment never prints them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyotp

from labsim import Lab
from labsim.allowlist import GATEWAY_PROTOCOLS
from labsim.desktop import desktop_available
from labsim.rdp import xrdp_available

HOSPITAL = "hoshi-hospital"
VENDOR = "acme-labs"
GATEWAY = "hoshi-lab-gw1"
INSTRUMENTS = ("cobas-c503-1", "las-line-a", "lis-hl7")
SSH_INSTRUMENTS = ("cobas-c503-1", "las-line-a")
DESKTOP = "lis-ws-1"  # the LIS workstation: a real VNC desktop, when Xvnc is installed
RDP_DESKTOP = "an-pc-1"  # the analyzer PC: a real RDP desktop (xrdp), when xrdp is installed
DESKTOPS = (DESKTOP, RDP_DESKTOP)


class DemoError(Exception):
    """A demo step failed; the message says which and why."""


@dataclass(frozen=True)
class Person:
    name: str
    full_name: str
    org: str
    role: str
    password: str


PEOPLE = (
    Person("admin", "Kobayashi Ken", "", "platform_admin", "Demo-Platform-Owner-2026"),
    Person("tanaka", "Tanaka Hanako", VENDOR, "engineer", "Blue-Analyzer-Maint-2026"),
    Person("sato", "Sato Ichiro", HOSPITAL, "approver", "Green-Approver-Lab-2026"),
    Person("suzuki", "Suzuki Aiko", HOSPITAL, "auditor", "Quiet-Auditor-Review-2026"),
)


def free_port(preferred: int) -> int:
    """``preferred`` when nothing listens there, otherwise a free port."""
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise DemoError("no free port on 127.0.0.1")


def _tool(name: str) -> str:
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise DemoError(f"{name} is not installed (run ./run demo)")
    return found


@dataclass
class Demo:
    root: Path
    api_port: int = 8440
    ssh_port: int = 2222
    tunnel_port: int = 2223
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)
    lab: Lab | None = None
    # more broker settings (HOSHU_*): a deployment's stores instead of the embedded ones
    broker_env: dict[str, str] = field(default_factory=dict)
    # the desktop instruments (DESKTOPS) too, when their programs are installed (./run demo)
    desktop: bool = False
    notes: list[str] = field(default_factory=list)  # what the demo left out, and why

    # --- plumbing --------------------------------------------------------------
    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def env(self, user: str | None = None) -> dict[str, str]:
        # HOSHU_SMTP_* are kept: the approvers' notification mail goes to a mail server
        # of yours (``HOSHU_SMTP_HOST=127.0.0.1 HOSHU_SMTP_PORT=1025 HOSHU_SMTP_SECURITY=none``)
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("HOSHU_") or k.startswith("HOSHU_SMTP_")
        }
        if env.get("HOSHU_SMTP_HOST"):
            env.setdefault("HOSHU_SMTP_FROM", "hoshu-demo@hoshu.example")
        env.update(
            {
                "HOSHU_DATA_DIR": str(self.root / "broker"),
                "HOSHU_API": self.api,
                "HOSHU_API_PORT": str(self.api_port),
                "HOSHU_SSH_PORT": str(self.ssh_port),
                "HOSHU_TUNNEL_PORT": str(self.tunnel_port),
                "HOSHU_SWEEP_INTERVAL_S": "2",
                "HOSHU_CONFIG_DIR": str(self.root / "users" / (user or "admin")),
            }
        )
        env.update(self.broker_env)
        return env

    def hoshu(self, user: str | None, *args: str, stdin: str | None = None) -> Any:
        """Run ``hoshu --json ARGS`` as ``user``; the parsed JSON answer."""
        proc = subprocess.run(
            [_tool("hoshu"), "--json", *args],
            input=(stdin or "").encode(),
            capture_output=True,
            env=self.env(user),
            timeout=60,
            check=False,
        )
        if proc.returncode != 0:
            raise DemoError(
                f"hoshu {' '.join(args[:3])} failed: "
                f"{proc.stderr.decode(errors='replace').strip()[-400:]}" + self._broker_problems()
            )
        out = proc.stdout.decode().strip()
        return json.loads(out) if out.startswith(("{", "[")) else out

    def _broker_problems(self, limit: int = 5) -> str:
        """The last ERROR/WARNING lines of the brokers' logs: why a command was refused."""
        lines: list[str] = []
        for path in sorted((self.root / "logs").glob("broker*.log")):
            with contextlib.suppress(OSError):
                tail = path.read_bytes()[-65536:].decode(errors="replace").splitlines()
                lines += [
                    f"{path.name}: {x[:300]}" for x in tail if " ERROR " in x or " WARNING " in x
                ]
        return ("\n" + "\n".join(lines[-limit:])) if lines else ""

    def code(self, user: str, *, ahead: int = 0) -> str:
        return pyotp.TOTP(self.secrets[user]).at(time.time() + 30 * ahead)

    def _spawn(
        self, name: str, argv: list[str], env: dict[str, str], *, append: bool = False
    ) -> None:
        log = open(self.root / "logs" / f"{name}.log", "ab" if append else "wb")
        self.procs[name] = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def restart_broker(self) -> None:
        """Start ``hoshu serve`` again on the same data and ports (after it died); returns
        at once: the caller waits for the ports."""
        self._spawn("broker", [_tool("hoshu"), "serve"], self.env(), append=True)

    def _wait_for(self, what: str, probe: Any, timeout_s: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    log = self.root / "logs" / (name + ".log")
                    raise DemoError(
                        f"{name} exited ({p.returncode}) while waiting for {what}; see "
                        f"{log}{_tail(log)}"
                    )
            result = probe()
            if result:
                return result
            time.sleep(0.1)
        raise DemoError(f"timed out waiting for {what}")

    # --- the steps -------------------------------------------------------------
    def start(self) -> dict[str, Any]:
        if self.root.exists():
            shutil.rmtree(self.root)
        for d in ("logs", "users", "gateway", "engineer"):
            (self.root / d).mkdir(parents=True)
        self.api_port = free_port(self.api_port)
        self.ssh_port = free_port(self.ssh_port)
        self.tunnel_port = free_port(self.tunnel_port)

        self.lab = Lab(self.root / "lab", names=self.lab_names())
        self.lab.start()
        self._start_broker()
        self._people()
        self._hospital()
        self._gateway()
        self._instruments()
        info = self.describe()
        (self.root / "demo.json").write_text(json.dumps(info, indent=2) + "\n")
        return info

    def lab_names(self) -> list[str]:
        """The lab's instruments: the desktops too when asked for and installed (else a
        note says why one is left out)."""
        names = list(INSTRUMENTS)
        if self.desktop:
            for desk, available in ((DESKTOP, desktop_available), (RDP_DESKTOP, xrdp_available)):
                missing = available()
                if missing is None:
                    names.append(desk)
                else:
                    self.notes.append(f"the desktop instrument {desk} is left out: {missing}")
        return names

    def _start_broker(self) -> None:
        admin = PEOPLE[0]
        boot = subprocess.run(
            [
                _tool("hoshu"),
                "--json",
                "admin",
                "bootstrap",
                "--name",
                admin.name,
                "--full-name",
                admin.full_name,
                "--password-stdin",
            ],
            input=admin.password.encode(),
            capture_output=True,
            env=self.env(),
            timeout=60,
            check=False,
        )
        if boot.returncode != 0:
            raise DemoError(f"bootstrap failed: {boot.stderr.decode(errors='replace')[-400:]}")
        self.secrets[admin.name] = json.loads(boot.stdout)["totp_secret"]
        self._spawn("broker", [_tool("hoshu"), "serve"], self.env())

        def ready() -> bool:
            for port in (self.api_port, self.ssh_port, self.tunnel_port):
                with socket.socket() as s:
                    s.settimeout(0.5)
                    if s.connect_ex(("127.0.0.1", port)) != 0:
                        return False
            return True

        self._wait_for("the broker", ready)
        self._pin_audit_key()
        self.hoshu(
            "admin",
            "login",
            "--user",
            admin.name,
            "--password-stdin",
            "--totp",
            self.code(admin.name),
            stdin=admin.password,
        )

    def _pin_audit_key(self) -> None:
        """Copy the broker's audit public key out of its data directory, as an operator
        pins it at set-up: ``hoshu audit verify`` trusts no key kept beside the log.
        With a Key Vault, the public keys come from ``hoshu admin keys public``."""
        pinned_dir = self.root / "auditor"
        pinned_dir.mkdir(exist_ok=True)
        if self.broker_env.get("HOSHU_KEY_VAULT_URL"):
            self.hoshu(None, "admin", "keys", "public", "--out", str(pinned_dir))
            return
        pub = self.root / "broker" / "keys" / "audit_signing_key.pub"
        self._wait_for("the broker's audit key", pub.exists)
        (pinned_dir / "audit_signing_key.pub").write_bytes(pub.read_bytes())

    def _people(self) -> None:
        self.hoshu("admin", "admin", "orgs", "create", HOSPITAL, "--kind", "hospital")
        self.hoshu("admin", "admin", "orgs", "create", VENDOR, "--kind", "vendor")
        key = self.root / "engineer" / "id_ed25519"
        subprocess.run(
            [
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "tanaka@acme-labs",
                "-f",
                str(key),
            ],
            check=True,
            timeout=30,
        )
        for p in PEOPLE[1:]:
            self.hoshu(
                "admin",
                "admin",
                "users",
                "create",
                p.name,
                "--full-name",
                p.full_name,
                "--org",
                p.org,
                "--role",
                p.role,
                "--email",
                f"{p.name}@{p.org}.example",  # the approver's notification mail goes here
                "--password-stdin",
                stdin=p.password,
            )
            # first sign-in: enrol TOTP the way a person does, then confirm with a code
            self.hoshu(p.name, "login", "--user", p.name, "--password-stdin", stdin=p.password)
            uri = self.hoshu(p.name, "totp", "enroll")["otpauth_uri"]
            self.secrets[p.name] = pyotp.parse_uri(uri).secret
            self.hoshu(p.name, "totp", "confirm", self.code(p.name))
        self.hoshu("admin", "admin", "users", "add-key", "tanaka", "--key-file", str(key) + ".pub")

    def _hospital(self) -> None:
        self.hoshu(
            "admin",
            "admin",
            "policy",
            "set",
            HOSPITAL,
            "--max-duration",
            "4h",
            "--approvals",
            "1",
            "--critical-approvals",
            "2",
            "--file-transfer",
            "yes",
            "--emergency",
            "yes",
            "--emergency-max-duration",
            "1h",
        )
        self.hoshu(
            "admin",
            "admin",
            "contracts",
            "create",
            "--vendor",
            VENDOR,
            "--hospital",
            HOSPITAL,
            "--instrument",
            "*",
            "--reference",
            "K-2026-17",
        )

    def _gateway(self) -> None:
        assert self.lab is not None
        token = self.hoshu("admin", "gateway", "token", "--hospital", HOSPITAL, "--ttl-s", "600")
        token = token["token"] if isinstance(token, dict) else str(token)
        gw = self.root / "gateway"
        config = gw / "gateway.toml"
        config.write_text(
            f'[gateway]\nname = "{GATEWAY}"\nstate_dir = "{gw / "state"}"\nmode = "always"\n\n'
            f'[broker]\napi = "{self.api}"\n\n' + self.lab.allowlist_toml()
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("HOSHU_")}
        enroll = subprocess.run(
            [
                _tool("hoshu-gateway"),
                "--config",
                str(config),
                "enroll",
                "--token-file",
                "/dev/stdin",
            ],
            input=token.encode(),
            capture_output=True,
            env=env,
            timeout=60,
            check=False,
        )
        if enroll.returncode != 0:
            raise DemoError(f"gateway enrolment failed: {enroll.stderr.decode()[-400:]}")
        self._spawn("gateway", [_tool("hoshu-gateway"), "--config", str(config), "run"], env)

        def connected() -> bool:
            st = subprocess.run(
                [_tool("hoshu-gateway"), "--config", str(config), "status", "--json"],
                capture_output=True,
                env=env,
                timeout=30,
                check=False,
            )
            try:
                return st.returncode == 0 and json.loads(st.stdout)["state"] == "connected"
            except (ValueError, KeyError):
                return False

        self._wait_for("the gateway tunnel", connected)

    def _instruments(self) -> None:
        assert self.lab is not None
        for name, inst in self.lab.instruments.items():
            desktop = GATEWAY_PROTOCOLS.get(inst.protocol, inst.protocol) in ("vnc", "rdp")
            args = [
                "admin",
                "instruments",
                "create",
                name,
                "--hospital",
                HOSPITAL,
                "--host",
                inst.host,
                "--gateway",
                GATEWAY,
                "--protocol",
                GATEWAY_PROTOCOLS.get(inst.protocol, inst.protocol),
                "--department",
                inst.department,
                "--model",
                inst.model,
                "--vendor",
                VENDOR,
            ]
            for port in inst.ports:
                args += ["--port", str(port)]
            if inst.credentials is not None and not desktop:
                args += [
                    "--ssh-port",
                    str(inst.port),
                    "--login-username",
                    inst.credentials.username,
                ]
            try:
                self.hoshu("admin", *args)
            except DemoError:  # the gateway's inventory may have registered it already
                args[2] = "set"
                self.hoshu("admin", *args)
            if inst.credentials is not None and inst.credentials.password_path is not None:
                user = inst.credentials.username  # RDP: the user the broker logs in as
                self.hoshu(  # the VNC or RDP password the broker logs in with
                    "admin",
                    "admin",
                    "instruments",
                    "credential",
                    name,
                    "--kind",
                    "password",
                    "--secret-file",
                    str(inst.credentials.password_path),
                    *(["--login-username", user] if user else []),
                )
            elif inst.credentials is not None:
                self.hoshu(
                    "admin",
                    "admin",
                    "instruments",
                    "credential",
                    name,
                    "--kind",
                    "private_key",
                    "--secret-file",
                    str(inst.credentials.private_key_path),
                )

    def describe(self) -> dict[str, Any]:
        assert self.lab is not None
        people = {
            p.name: {
                "full_name": p.full_name,
                "organization": p.org or "platform",
                "role": p.role,
                "password": p.password,
                "totp_secret": self.secrets[p.name],
                "config_dir": str(self.root / "users" / p.name),
            }
            for p in PEOPLE
        }
        return {
            "broker": {
                "host": "127.0.0.1",
                "api_url": self.api,
                "console_url": f"{self.api}/console/",
                "ssh_port": self.ssh_port,
                "tunnel_port": self.tunnel_port,
                "data_dir": str(self.root / "broker"),
            },
            "hospital": HOSPITAL,
            "vendor": VENDOR,
            "gateway": GATEWAY,
            "users": people,
            "engineer_key": str(self.root / "engineer" / "id_ed25519"),
            "instruments": {
                name: {
                    "host": i.host,
                    "ports": list(i.ports),
                    "protocol": i.protocol,
                    "department": i.department,
                    "model": i.model,
                    "ssh_port": i.port if name in SSH_INSTRUMENTS else None,
                    "desktop_url": f"{self.api}/console/desktop/{name}?port={i.port}"
                    if name in DESKTOPS
                    else None,
                    # what the broker pins on first sight (``SHA256:`` and hex of the DER)
                    "tls_certificate_fingerprint": i.host_key_fingerprint
                    if i.protocol == "rdp"
                    else None,
                }
                for name, i in self.lab.instruments.items()
            },
            "notes": list(self.notes),
            "logs": str(self.root / "logs"),
            "audit_public_key": str(self.root / "auditor" / "audit_signing_key.pub"),
        }

    def stop(self) -> None:
        for name in ("gateway", "broker"):
            p = self.procs.get(name)
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=5)
        self.procs.clear()
        if self.lab is not None:
            self.lab.stop()
            self.lab = None

    def check_alive(self) -> str | None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                return f"{name} stopped (exit {p.returncode}); see {self.root / 'logs'}"
        return None


def _tail(log: Path, lines: int = 8) -> str:
    """The last ``lines`` of a log that ended, indented: why its process stopped."""
    try:
        tail = log.read_bytes()[-16384:].decode(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "".join(f"\n    {x[:300]}" for x in tail)
