"""The broker image, built from the Containerfile and run as production runs it.

deploy/image/build.sh makes the Debian base with mmdebstrap (cached under
$HOSHU_IMAGE_CACHE, keyed by the package list), the wheelhouse (dependencies
cached, keyed by the lock file), and the image with buildah (overlay storage
under the cache, chroot isolation: no daemon).  podman runs it on loopback (host network) with a
read-only root filesystem, /tmp as tmpfs and a data volume owned by the image's
user, as the reference deployment does.  Then: /healthz and /readyz answer, the
image's HEALTHCHECK passes, the SSH front door sends its banner, an admin
bootstrapped by the image's own CLI signs in (password + TOTP) from the host, and
an engineer that admin makes signs in to the front door with stock ssh (key + TOTP),
and a whole instrument session runs through the container: the demo's set-up (a
gateway enrolled with ``hoshu-gateway`` dialling the container's tunnel port, a real
sshd as the instrument, a grant approved) against a broker that is the image, the
engineer's stock ``ssh`` reaching the instrument, and the session recorded on the
data volume with the recording's SHA-256 in ``session.ended``.

On this machine podman needs: runc (crun refuses the hybrid cgroup layout),
``--cgroup-manager cgroupfs`` (no systemd), and explicit RLIMIT_NOFILE/NPROC at
or below the sandbox's own (podman's defaults are above what it may set).
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyotp
import pytest

from hoshu_demo.demo import PEOPLE, Demo
from tests.fixtures.azurite import Azurite
from tests.fixtures.postgres import create_database
from tests.support import free_port, poll_sync
from tests.support.demoflow import Totp, request_approved, sign_in
from tests.support.identity import IdentityEndpoint
from tests.support.keyvault import IdentityTokens, KeyVault
from tests.support.stockssh import engineer_ssh

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ("buildah", "podman", "mmdebstrap", "runc")
UID = 10001  # the image's user (Containerfile)

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("image"), pytest.mark.timeout(900)]


def _cache() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hoshu-image"
    return Path(os.environ.get("HOSHU_IMAGE_CACHE") or default)


def _storage_flags() -> list[str]:
    c = _cache()
    return [
        "--root",
        str(c / "storage-overlay"),
        "--runroot",
        str(c / "run-overlay"),
        "--storage-driver",
        "overlay",
    ]


def _podman(
    *args: str, timeout: float = 120, check: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    argv = ["podman", *_storage_flags(), "--runtime", "runc", "--cgroup-manager", "cgroupfs", *args]
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, input=stdin
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {args[0]} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc


def _limits() -> list[str]:
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", "nproc=4096:4096"]


@dataclass
class Built:
    tag: str
    seconds: float


@pytest.fixture(scope="module")
def image() -> Iterator[Built]:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    assert not missing, f"the image tests need {missing} (./run test installs them)"
    tag = f"localhost/hoshu:test-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "HOSHU_IMAGE_CACHE": str(_cache()),
        "BUILDAH_FLAGS": " ".join(_storage_flags()),
        "PYTHON": str(ROOT / ".venv" / "bin" / "python"),
    }
    started = time.monotonic()
    proc = subprocess.run(
        [str(ROOT / "deploy" / "image" / "build.sh"), tag],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
    )
    took = time.monotonic() - started
    assert proc.returncode == 0, f"image build failed after {took:.0f} s: {proc.stderr[-3000:]}"
    print(f"image build took {took:.1f} s")
    try:
        yield Built(tag, took)
    finally:
        subprocess.run(
            ["buildah", *_storage_flags(), "rmi", "-f", tag],
            capture_output=True,
            timeout=120,
            check=False,
        )
        subprocess.run(
            ["buildah", *_storage_flags(), "rmi", "--prune"],
            capture_output=True,
            timeout=120,
            check=False,
        )


@dataclass
class Running:
    name: str
    api: str
    ssh_port: int
    data: Path
    totp_secret: str


@pytest.fixture(scope="module")
def broker(image: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    data = tmp_path_factory.mktemp("broker-data")
    os.chown(data, UID, UID)
    api_port, ssh_port, tunnel_port = free_port(), free_port(), free_port()
    name = f"hoshu-test-{uuid.uuid4().hex[:8]}"
    env = [
        "-e",
        "HOSHU_API_HOST=127.0.0.1",
        "-e",
        f"HOSHU_API_PORT={api_port}",
        "-e",
        "HOSHU_SSH_HOST=127.0.0.1",
        "-e",
        f"HOSHU_SSH_PORT={ssh_port}",
        "-e",
        "HOSHU_TUNNEL_HOST=127.0.0.1",
        "-e",
        f"HOSHU_TUNNEL_PORT={tunnel_port}",
    ]
    volume = ["-v", f"{data}:/var/lib/hoshu"]
    common = ["--network", "host", "--read-only", "--tmpfs", "/tmp", *_limits(), *volume, *env]
    # the first admin, made by the image's own CLI on the same volume (as an operator would)
    boot = _podman(
        "run",
        "--rm",
        "-i",
        *common,
        "--entrypoint",
        "/opt/hoshu/bin/hoshu",
        image.tag,
        "--json",
        "admin",
        "bootstrap",
        "--name",
        "root-admin",
        "--full-name",
        "Image Test",
        "--password-stdin",
        stdin="Image-Test-Password-2026",
    )
    secret = json.loads(boot.stdout)["totp_secret"]
    _podman("run", "-d", "--name", name, *common, image.tag)
    api = f"http://127.0.0.1:{api_port}"
    try:
        poll_sync(
            lambda: _answers(api_port) and _answers(ssh_port),
            60,
            "the containerised broker to listen on its API and SSH ports",
        )
        yield Running(name, api, ssh_port, data, secret)
    finally:
        logs = _podman("logs", name, check=False).stderr[-3000:]
        _podman("rm", "-f", "-t", "5", name, check=False)
        print(logs)


def _answers(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _get(url: str) -> tuple[int, dict[str, object]]:
    import httpx

    r = httpx.get(url, timeout=5)
    return r.status_code, r.json()


def test_healthz_readyz_and_the_images_own_healthcheck_pass(broker: Running) -> None:
    assert _get(f"{broker.api}/healthz") == (200, {"status": "ok"})
    status, body = _get(f"{broker.api}/readyz")
    assert status == 200 and body["status"] == "ready"
    # the HEALTHCHECK instruction the image carries, run the way the engine runs it
    hc = _podman("healthcheck", "run", broker.name, check=False)
    assert hc.returncode == 0, hc.stderr
    state = _podman("inspect", broker.name, "--format", "{{.State.Health.Status}}").stdout
    assert state.strip() == "healthy"


def test_the_front_door_sends_an_ssh_banner(broker: Running) -> None:
    with socket.create_connection(("127.0.0.1", broker.ssh_port), timeout=5) as s:
        s.settimeout(5)
        banner = s.recv(256)
    assert banner.startswith(b"SSH-2.0-"), banner


def test_an_admin_signs_in_with_password_and_totp_through_the_container(
    broker: Running, tmp_path: Path
) -> None:
    """The host's ``hoshu login`` against the containerised API: a wrong code is
    refused, the right one gives a token that ``whoami`` accepts."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOSHU_")}
    env.update({"HOSHU_API": broker.api, "HOSHU_CONFIG_DIR": str(tmp_path / "cli")})
    hoshu = str(ROOT / ".venv" / "bin" / "hoshu")
    totp = pyotp.TOTP(broker.totp_secret)

    def login(code: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [hoshu, "--json", "login", "--user", "root-admin", "--password-stdin", "--totp", code],
            env=env,
            text=True,
            input="Image-Test-Password-2026",
            capture_output=True,
            timeout=60,
            check=False,
        )

    wrong = f"{(int(totp.now()) + 1) % 1_000_000:06d}"
    assert login(wrong).returncode != 0
    ok = login(totp.now())
    assert ok.returncode == 0, ok.stderr
    who = subprocess.run(
        [hoshu, "--json", "whoami"],
        env=env,
        text=True,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert who.returncode == 0, who.stderr
    assert json.loads(who.stdout)["name"] == "root-admin"


def test_an_engineer_signs_in_with_stock_ssh_key_and_totp_through_the_container(
    broker: Running, tmp_path: Path
) -> None:
    """An engineer made through the containerised API (the admin's ``hoshu``), who
    enrols TOTP as a person does, signs in to the container's SSH front door with
    stock ``ssh``: her key and a wrong code are refused; her key and the right code
    get her in, and the broker tells her to name an instrument."""
    hoshu = str(ROOT / ".venv" / "bin" / "hoshu")
    base = {k: v for k, v in os.environ.items() if not k.startswith("HOSHU_")}

    def run(who: str, *args: str, stdin: str = "") -> str:
        env = {**base, "HOSHU_API": broker.api, "HOSHU_CONFIG_DIR": str(tmp_path / who)}
        proc = subprocess.run(
            [hoshu, "--json", *args],
            env=env,
            text=True,
            input=stdin,
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, f"hoshu {' '.join(args[:3])}: {proc.stderr[-500:]}"
        return proc.stdout

    admin = Totp(broker.totp_secret, time.time())  # another test may have used this step
    run("admin", "login", "--user", "root-admin", "--password-stdin", "--totp", admin.code(),
        stdin="Image-Test-Password-2026")  # fmt: skip
    run("admin", "admin", "orgs", "create", "acme-labs", "--kind", "vendor")
    password = "Engineer-Image-Test-2026"
    run("admin", "admin", "users", "create", "tanaka", "--full-name", "Tanaka Hanako",
        "--org", "acme-labs", "--role", "engineer", "--email", "tanaka@acme-labs.example",
        "--password-stdin", stdin=password)  # fmt: skip
    run("tanaka", "login", "--user", "tanaka", "--password-stdin", stdin=password)
    uri = json.loads(run("tanaka", "totp", "enroll"))["otpauth_uri"]
    tanaka = Totp(pyotp.parse_uri(uri).secret, time.time() - 60)
    run("tanaka", "totp", "confirm", tanaka.code())
    key = tmp_path / "engineer" / "id_ed25519"
    key.parent.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                   check=True, timeout=30)  # fmt: skip
    run("admin", "admin", "users", "add-key", "tanaka", "--key-file", f"{key}.pub")

    def ssh(code: str) -> subprocess.CompletedProcess[str]:
        argv, env = engineer_ssh(tmp_path, base, code, broker.ssh_port, "tanaka", "true")
        return subprocess.run(
            argv, env=env, text=True, capture_output=True, timeout=60, check=False
        )

    good = tanaka.code()
    wrong = ssh(f"{(int(good) + 1) % 1_000_000:06d}")
    assert wrong.returncode == 255 and "Permission denied" in wrong.stderr, wrong.stderr
    ok = ssh(good)
    assert "Permission denied" not in ok.stderr, ok.stderr
    assert "name an instrument" in ok.stdout + ok.stderr, (ok.stdout, ok.stderr)


def test_the_container_serves_the_consoles_player_and_novnc_files(broker: Running) -> None:
    """The console's npm files are in the image (copied at build time, no npm there):
    the recording player's bundle and style sheet and noVNC's RFB module answer 200
    with the bytes package-lock.json pinned, and a file outside them is still 404."""
    import httpx

    served = {
        "/console/static/vendor/asciinema-player.min.js": ROOT
        / "node_modules/asciinema-player/dist/bundle/asciinema-player.min.js",
        "/console/static/vendor/asciinema-player.css": ROOT
        / "node_modules/asciinema-player/dist/bundle/asciinema-player.css",
        "/console/static/novnc/core/rfb.js": ROOT / "node_modules/@novnc/novnc/core/rfb.js",
    }
    for path, local in served.items():
        r = httpx.get(f"{broker.api}{path}", timeout=5)
        assert r.status_code == 200, (path, r.status_code, r.text[:200])
        assert r.content == local.read_bytes(), path
    assert (
        "javascript"
        in httpx.get(
            f"{broker.api}/console/static/vendor/asciinema-player.min.js", timeout=5
        ).headers["content-type"]
    )
    assert (
        httpx.get(f"{broker.api}/console/static/vendor/package.json", timeout=5).status_code == 404
    )


def test_the_container_runs_as_its_user_on_a_read_only_root_without_build_tools(
    broker: Running,
) -> None:
    """Non-root, nothing writable but the data volume and /tmp, and no compiler,
    package manager or pip in the final image."""
    ident = _podman("exec", broker.name, "id", "-u").stdout.strip()
    assert ident == str(UID)
    root = _podman("exec", broker.name, "sh", "-c", "touch /opt/hoshu/x", check=False)
    assert root.returncode != 0 and "Read-only file system" in root.stderr
    assert (
        _podman(
            "exec", broker.name, "sh", "-c", "touch /tmp/x /var/lib/hoshu/x", check=False
        ).returncode
        == 0
    )
    found = _podman(
        "exec",
        broker.name,
        "sh",
        "-c",
        "for t in gcc cc c++ make ld apt apt-get pip pip3; do command -v $t; done",
        check=False,
    ).stdout
    assert found.split() == []
    venv_bin = _podman("exec", broker.name, "ls", "/opt/hoshu/bin").stdout.split()
    assert "hoshu" in venv_bin and not [b for b in venv_bin if b.startswith("pip")]
    nopip = _podman("exec", broker.name, "/opt/hoshu/bin/python3", "-c", "import pip", check=False)
    assert nopip.returncode != 0
    assert (broker.data / "keys").stat().st_uid == UID  # what it wrote is its own


def test_podman_stop_drains_and_the_container_exits_0(image: Built, tmp_path: Path) -> None:
    """SIGTERM reaches ``hoshu serve`` as PID 1: it drains, closes the audit log with a
    signed checkpoint and exits 0 well before podman would SIGKILL it."""
    data = tmp_path / "data"
    data.mkdir()
    os.chown(data, UID, UID)
    name = f"hoshu-stop-{uuid.uuid4().hex[:8]}"
    api_port = free_port()
    _podman(
        "run",
        "-d",
        "--name",
        name,
        "--network",
        "host",
        "--read-only",
        "--tmpfs",
        "/tmp",
        *_limits(),
        "-v",
        f"{data}:/var/lib/hoshu",
        "-e",
        "HOSHU_API_HOST=127.0.0.1",
        "-e",
        f"HOSHU_API_PORT={api_port}",
        "-e",
        "HOSHU_SSH_HOST=127.0.0.1",
        "-e",
        f"HOSHU_SSH_PORT={free_port()}",
        "-e",
        "HOSHU_TUNNEL_HOST=127.0.0.1",
        "-e",
        f"HOSHU_TUNNEL_PORT={free_port()}",
        image.tag,
    )
    try:
        poll_sync(lambda: _answers(api_port), 60, "the container's API")
        started = time.monotonic()
        _podman("stop", "-t", "30", name, timeout=60)
        took = time.monotonic() - started
        code = _podman("inspect", name, "--format", "{{.State.ExitCode}}").stdout.strip()
        logs = _podman("logs", name).stderr
        assert code == "0", logs[-2000:]
        assert took < 25, f"stopping took {took:.1f} s (podman kills at 30)"
        assert "draining" in logs
    finally:
        _podman("rm", "-f", name, check=False)


@dataclass
class ContainerDemo(Demo):
    """The demo (people, hospital, enrolled gateway, real sshd instruments) with its
    broker the image, run by podman on host networking with the demo's data folder
    ``broker/`` as the data volume; the gateway and the CLI stay on the host."""

    tag: str = ""
    container: str = ""
    # what only the container gets: settings naming paths inside it, and their mounts
    container_extra: list[str] = field(default_factory=list)

    def container_args(self) -> list[str]:
        env = {
            "HOSHU_API_HOST": "127.0.0.1",
            "HOSHU_API_PORT": str(self.api_port),
            "HOSHU_SSH_HOST": "127.0.0.1",
            "HOSHU_SSH_PORT": str(self.ssh_port),
            "HOSHU_TUNNEL_HOST": "127.0.0.1",
            "HOSHU_TUNNEL_PORT": str(self.tunnel_port),
            "HOSHU_SWEEP_INTERVAL_S": "2",
            **self.broker_env,
        }
        flags = [f for k, v in env.items() for f in ("-e", f"{k}={v}")]
        volume = ["-v", f"{self.root / 'broker'}:/var/lib/hoshu"]
        common = ["--network", "host", "--read-only", "--tmpfs", "/tmp", *_limits(), *volume]
        return [*common, *flags, *self.container_extra]

    def _start_broker(self) -> None:
        admin = PEOPLE[0]
        data = self.root / "broker"
        data.mkdir(exist_ok=True)
        os.chown(data, UID, UID)
        boot = _podman(
            "run", "--rm", "-i", *self.container_args(), "--entrypoint", "/opt/hoshu/bin/hoshu",
            self.tag, "--json", "admin", "bootstrap", "--name", admin.name,
            "--full-name", admin.full_name, "--password-stdin", stdin=admin.password,
        )  # fmt: skip
        self.secrets[admin.name] = json.loads(boot.stdout)["totp_secret"]
        self.start_container()
        self._pin_audit_key()
        self.hoshu("admin", "login", "--user", admin.name, "--password-stdin",
                   "--totp", self.code(admin.name), stdin=admin.password)  # fmt: skip

    def start_container(self, *, append: bool = False) -> None:
        """``podman run`` in the foreground (its output is logs/broker.log); returns when
        the API, SSH and tunnel ports answer."""
        run = ["run", "--rm", "--name", self.container, *self.container_args(), self.tag]
        argv = ["podman", *_storage_flags(), "--runtime", "runc", "--cgroup-manager", "cgroupfs"]
        argv += run
        env = {k: v for k, v in os.environ.items() if "HOSHU" not in k}
        self._spawn("broker", argv, env, append=append)
        ports = (self.api_port, self.ssh_port, self.tunnel_port)
        self._wait_for("the containerised broker", lambda: all(map(_answers, ports)), 90)

    def stop(self) -> None:
        _podman("stop", "-t", "10", self.container, timeout=60, check=False)
        super().stop()
        _podman("rm", "-f", self.container, check=False)


@pytest.fixture
def system(image: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ContainerDemo]:
    # a short folder: the gateway's control socket path must fit AF_UNIX's 108 bytes
    d = ContainerDemo(
        tmp_path_factory.mktemp("img") / ".hoshu-demo",
        api_port=0,
        ssh_port=0,
        tunnel_port=0,
        tag=image.tag,
        container=f"hoshu-session-{uuid.uuid4().hex[:8]}",
    )
    try:
        started = time.monotonic()
        d.start()
        print(f"demo set-up against the container: {time.monotonic() - started:.1f} s")
        yield d
    finally:
        d.stop()
        print((d.root / "logs" / "broker.log").read_text(errors="replace")[-3000:])


def _events(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def test_an_engineer_reaches_an_instrument_through_the_container_and_the_session_is_recorded(
    system: ContainerDemo,
) -> None:
    """The gateway enrolled with the containerised broker and holds its tunnel; tanaka
    asks for the analyzer, sato approves, and tanaka's stock ``ssh`` through the
    container's front door runs a command on the real sshd behind the gateway (its
    output comes back); the recording on the data volume holds that output and
    ``session.ended`` carries its size and SHA-256."""
    d = system
    codes = sign_in(d, ("tanaka", "sato"))
    request_approved(
        d, "cobas-c503-1", reason="image test", ticket="INC-7", plan="read the version"
    )
    argv, env = engineer_ssh(
        d.root,
        d.env("tanaka"),
        codes["tanaka"].code(),
        d.ssh_port,
        "tanaka+cobas-c503-1",
        "echo image-marker-$((6*7)); id -un",
    )
    started = time.monotonic()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=90, check=False)
    print(f"stock ssh through the container to the instrument: {time.monotonic() - started:.1f} s")
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert "image-marker-42" in proc.stdout

    broker_dir = d.root / "broker"
    casts = [
        p
        for p in (broker_dir / "recordings").glob("*.cast")
        if b"image-marker-42" in p.read_bytes()
    ]
    assert len(casts) == 1, list((broker_dir / "recordings").iterdir())
    [cast] = casts
    log = broker_dir / "audit" / "audit.log"

    def ended() -> dict[str, Any]:
        return next(
            (
                e
                for e in _events(log)
                if e.get("EventType") == "session.ended" and e.get("TargetSessionId") == cast.stem
            ),
            {},
        )

    event = poll_sync(ended, 30, "session.ended in the container's audit log")
    data = cast.read_bytes()
    assert event["RecordingSize"] == len(data)
    assert event["RecordingSHA256"] == hashlib.sha256(data).hexdigest()
    assert json.loads(data.splitlines()[0])["version"] == 2  # asciicast v2, playable
    assert cast.stat().st_uid == UID  # written by the image's user on the volume


CA_IN_CONTAINER = "/etc/hoshu-test/ca.pem"


@pytest.fixture
def cloud(
    tmp_path_factory: pytest.TempPathFactory, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[dict[str, str], list[str]]]:
    """Key Vault, Blob storage, PostgreSQL and the managed identity, all on 127.0.0.1:
    the broker settings naming them, and the container's own settings and mounts (the
    identity endpoint's variables, as Container Apps set them, and the stand-ins' CA)."""
    root = tmp_path_factory.mktemp("cloud")
    with IdentityEndpoint() as identity:
        for k, v in identity.env().items():
            monkeypatch.setenv(k, v)  # for the host's CLI (hoshu admin keys public)
        vault = KeyVault(root / "kv", tokens=IdentityTokens(identity)).start()
        blob = Azurite(root / "azurite").start()
        try:
            from broker.identity import azure_credential

            container = blob.new_container(azure_credential(identity.client_id))
            bundle = root / "ca.pem"  # the stand-ins' self-signed certificates
            bundle.write_bytes(vault.cert_path.read_bytes() + blob.cert.read_bytes())
            bundle.chmod(0o644)
            monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
            db = create_database(postgres_url, f"image_{uuid.uuid4().hex[:8]}")
            settings = {
                "HOSHU_DATABASE_URL": db,
                "HOSHU_KEY_VAULT_URL": vault.url,
                "HOSHU_RECORDINGS_URL": container,
                "HOSHU_AUDIT_STORE": "postgres",
                "HOSHU_REPLICA_ID": "broker-a",
            }
            only_container = {**identity.env(), "REQUESTS_CA_BUNDLE": CA_IN_CONTAINER}
            extra = [f for k, v in only_container.items() for f in ("-e", f"{k}={v}")]
            extra += ["-v", f"{bundle}:{CA_IN_CONTAINER}:ro"]
            yield settings, extra
        finally:
            blob.stop()
            vault.close()


@pytest.fixture
def durable(
    image: Built,
    tmp_path_factory: pytest.TempPathFactory,
    cloud: tuple[dict[str, str], list[str]],
) -> Iterator[ContainerDemo]:
    settings, extra = cloud
    d = ContainerDemo(
        tmp_path_factory.mktemp("imgd") / ".hoshu-demo",
        api_port=0,
        ssh_port=0,
        tunnel_port=0,
        broker_env=dict(settings),
        tag=image.tag,
        container=f"hoshu-durable-{uuid.uuid4().hex[:8]}",
        container_extra=extra,
    )
    try:
        d.start()
        yield d
    finally:
        d.stop()
        print((d.root / "logs" / "broker.log").read_text(errors="replace")[-3000:])


def _gateway_connected(d: Demo) -> bool:
    config = d.root / "gateway" / "gateway.toml"
    st = subprocess.run(
        [
            str(ROOT / ".venv" / "bin" / "hoshu-gateway"),
            "--config",
            str(config),
            "status",
            "--json",
        ],
        capture_output=True,
        timeout=30,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("HOSHU_")},
    )
    try:
        return st.returncode == 0 and json.loads(st.stdout)["state"] == "connected"
    except (ValueError, KeyError):
        return False


def _ssh(d: Demo, codes: Totp, known: Path, strict: str, command: str) -> str:
    argv, env = engineer_ssh(
        d.root, d.env("tanaka"), codes.code(), d.ssh_port, "tanaka+cobas-c503-1", command,
        known_hosts=known, strict=strict, connect_timeout_s=20,
    )  # fmt: skip
    r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    return r.stdout


def _ended(d: Demo) -> dict[str, dict[str, Any]]:
    found = d.hoshu("suzuki", "audit", "search", "--type", "session.ended", "--limit", "50")
    rows = found["events"] if isinstance(found, dict) else found
    return {str(e["TargetSessionId"]): e for e in rows}


@pytest.mark.postgres
def test_the_container_killed_and_started_on_a_deleted_volume_loses_nothing(
    durable: ContainerDemo,
) -> None:
    """With the durable settings the image supports (keys in Key Vault through the
    managed identity, recordings in Blob storage, store and audit chain in PostgreSQL),
    a recorded session, then the container killed (SIGKILL) and its data volume
    deleted: a new container on an empty volume is taken back by the gateway (which
    pinned the tunnel host key) and by the engineer's ``ssh`` with
    ``StrictHostKeyChecking=yes``, signs her in (TOTP sealed by the vault) and logs in
    to the instrument (credential sealed too); the old recording plays from Blob
    storage with the SHA-256 of its ``session.ended``, and one audit chain written by
    both containers verifies with the keys the auditor pinned from the vault."""
    d = durable
    codes = sign_in(d, ("tanaka", "sato", "suzuki"))
    request_approved(d, "cobas-c503-1", reason="image restart", ticket="INC-8", plan="a command")
    known = d.root / "known_hosts"
    assert "before-42" in _ssh(d, codes["tanaka"], known, "accept-new", "echo before-$((6*7))")
    [(first_sid, first)] = poll_sync(
        lambda: list(_ended(d).items()), 60, "session.ended of the first session", interval_s=0.5
    )
    assert not list((d.root / "broker").rglob("*.cast")), "recordings belong in Blob storage"

    _podman("kill", "-s", "KILL", d.container, timeout=60)
    d.procs["broker"].wait(timeout=30)
    _podman("rm", "-f", d.container, check=False)
    shutil.rmtree(d.root / "broker")  # the volume is gone; a new, empty one
    (d.root / "broker").mkdir()
    os.chown(d.root / "broker", UID, UID)
    started = time.monotonic()
    d.start_container(append=True)
    poll_sync(
        lambda: _gateway_connected(d), 60, "the gateway back on the new container", interval_s=0.5
    )
    print(
        f"new container on an empty volume to gateway connected: {time.monotonic() - started:.1f} s"
    )

    assert "after-42" in _ssh(d, codes["tanaka"], known, "yes", "echo after-$((6*7))")
    token = json.loads((d.root / "users" / "suzuki" / "token.json").read_text())["access_token"]
    import httpx

    r = httpx.get(
        f"{d.api}/v1/recordings/{first_sid}",
        timeout=30,
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.status_code == 200, r.text
    assert b"before-42" in r.content
    assert hashlib.sha256(r.content).hexdigest() == first["RecordingSHA256"]
    assert len(r.content) == first["RecordingSize"]
    ended = poll_sync(
        lambda: e if len(e := _ended(d)) >= 2 else None,
        60,
        "session.ended of the second",
        interval_s=0.5,
    )
    assert first_sid in ended  # the killed container's events are still searchable

    # a clean stop (SIGTERM: drain) signs the chain's tail; then the auditor verifies
    d.procs["broker"].send_signal(signal.SIGTERM)
    assert d.procs["broker"].wait(timeout=60) == 0
    keys = sorted((d.root / "auditor").glob("audit-signing-*.pem"))
    assert keys, "the auditor pinned the vault's public signing keys at set-up"
    verify = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "hoshu"), "--json", "audit", "verify",
         "--store", d.broker_env["HOSHU_DATABASE_URL"],
         *[a for k in keys for a in ("--trusted-key", str(k))]],
        env=d.env(), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr
    report = json.loads(verify.stdout)
    chains = {c["log"]: c for c in report["chains"]}
    assert report["ok"] and set(chains) == {"postgres:broker-a", "postgres:broker-a.admin"}
    own = chains["postgres:broker-a"]
    assert own["signatures_checked"] and own["unsigned_tail"] == 0 and own["checkpoints"] >= 1
