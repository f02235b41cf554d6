"""The gateway's configuration: one TOML file, read once, passed down.

Format (``/etc/hoshu/gateway.toml``)::

    [gateway]
    name = "stmary-lab-gw1"              # [a-z0-9-]{1,63}
    state_dir = "/var/lib/hoshu-gateway"  # keys, enrolment, audit copy, pause state
    mode = "always"                       # or "window-only"

    [broker]
    api = "https://hoshu.example.jp"      # used by `hoshu-gateway enroll` only
    # tunnel_host / tunnel_port override what enrolment returned (optional), or:
    # addresses = ["broker-a.example.jp:2223", "broker-b.example.jp:2223"]
    #                                     # several replicas: a tunnel to each address
    #                                     # (a name resolving to several IPs: to each IP)
    # min_tunnels = 2                     # tunnels on distinct replicas; fewer: degraded
    #                                     # (fewer addresses than this, e.g. one balanced
    #                                     # address: min_tunnels slots dial it, each told
    #                                     # which replica it reached; a replica already
    #                                     # holding one refuses the next, which redials)

    [tunnel]                              # optional tuning, defaults shown
    heartbeat_s = 10
    heartbeat_misses = 3
    backoff_initial_s = 0.5
    backoff_max_s = 5
    connect_timeout_s = 30                # a login to a loaded broker may take a while
    check_interval_s = 60                 # window-only: how often to ask for windows
    inventory_interval_s = 300
    channel_connect_timeout_s = 5
    redial_elsewhere_max_s = 30           # longest jittered wait after "already connected"

    [[instrument]]
    name = "cobas-c503-1"
    host = "10.20.0.15"
    ports = [22]
    protocol = "ssh"                      # ssh, rdp, vnc, http, https, hl7, tcp
    department = "chemistry"
    model = "cobas c 503"

Anything unknown or out of range is a :class:`~gateway.errors.ConfigError`
naming the file and the field; nothing starts on a bad file.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError
from wire import Mode
from wire.names import INSTRUMENT_PROTOCOLS
from wire.names import NAME_PATTERN as _NAME  # the broker checks names with the same one

_PROTOCOLS = INSTRUMENT_PROTOCOLS
MAX_CONFIG_BYTES = 1024 * 1024
MAX_ADDRESSES = 16


@dataclass(frozen=True, slots=True)
class Instrument:
    name: str
    host: str
    ports: tuple[int, ...]
    protocol: str
    department: str = ""
    model: str = ""


@dataclass(frozen=True, slots=True)
class TunnelTuning:
    heartbeat_s: float = 10.0
    heartbeat_misses: int = 3
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 5.0
    connect_timeout_s: float = 30.0
    check_interval_s: float = 60.0
    inventory_interval_s: float = 300.0
    channel_connect_timeout_s: float = 5.0
    redial_elsewhere_max_s: float = 30.0


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    name: str
    state_dir: Path
    mode: Mode
    api: str
    instruments: tuple[Instrument, ...]
    tunnel: TunnelTuning = TunnelTuning()
    tunnel_host: str | None = None
    tunnel_port: int | None = None
    addresses: tuple[tuple[str, int], ...] = ()  # several replicas; empty: the one above
    min_tunnels: int = 1

    @property
    def key_path(self) -> Path:
        return self.state_dir / "gateway_key"

    @property
    def enrollment_path(self) -> Path:
        return self.state_dir / "enrollment.json"

    @property
    def state_path(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def control_socket(self) -> Path:
        return self.state_dir / "control.sock"

    @property
    def audit_path(self) -> Path:
        return self.state_dir / "audit" / "gateway-audit.log"


def _table(doc: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: [{key}] must be a table")
    return value


def _take(
    table: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str, default: Any = ...
) -> Any:
    if key not in table:
        if default is ...:
            raise ConfigError(f"{where}: {key} is required")
        return default
    value = table[key]
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        raise ConfigError(f"{where}: {key} has the wrong type")
    return value


def _check_keys(table: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)}")


def _instrument(raw: Any, where: str) -> Instrument:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a table")
    _check_keys(raw, {"name", "host", "ports", "protocol", "department", "model"}, where)
    name = _take(raw, "name", str, where)
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"{where}: name {name[:70]!r} is not [a-z0-9-]{{1,63}} "
            "(starting and ending with a letter or digit)"
        )
    host = _take(raw, "host", str, where)
    if not host or len(host) > 253 or any(c.isspace() for c in host):
        raise ConfigError(f"{where} ({name}): host is not a host name or address")
    ports = _take(raw, "ports", list, where)
    if (
        not ports
        or len(ports) > 64
        or not all(
            isinstance(p, int) and not isinstance(p, bool) and 1 <= p <= 65535 for p in ports
        )
    ):
        raise ConfigError(f"{where} ({name}): ports must be 1-64 port numbers 1..65535")
    protocol = _take(raw, "protocol", str, where)
    if protocol not in _PROTOCOLS:
        raise ConfigError(f"{where} ({name}): protocol must be one of {sorted(_PROTOCOLS)}")
    return Instrument(
        name,
        host,
        tuple(sorted(set(ports))),
        protocol,
        _take(raw, "department", str, where, ""),
        _take(raw, "model", str, where, ""),
    )


def parse_address(text: str, where: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port); ConfigError naming ``text`` else."""
    host, sep, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if (
        not sep
        or not host
        or len(host) > 253
        or any(c.isspace() for c in host)
        or not port_text.isdigit()
        or not 1 <= int(port_text) <= 65535
    ):
        raise ConfigError(f"{where}: address {text[:80]!r} is not host:port")
    return host, int(port_text)


def _addresses(broker: dict[str, Any], where: str) -> tuple[tuple[str, int], ...]:
    raw = _take(broker, "addresses", list, where, [])
    if len(raw) > MAX_ADDRESSES or not all(isinstance(a, str) for a in raw):
        raise ConfigError(f'{where}: addresses must be at most {MAX_ADDRESSES} "host:port" strings')
    out = tuple(parse_address(a, where) for a in raw)
    if len(set(out)) != len(out):
        raise ConfigError(f"{where}: addresses are listed twice")
    if out and ("tunnel_host" in broker or "tunnel_port" in broker):
        raise ConfigError(f"{where}: give either addresses or tunnel_host/tunnel_port, not both")
    return out


def _tuning(raw: dict[str, Any], where: str) -> TunnelTuning:
    defaults = TunnelTuning()
    fields = {f.name: getattr(defaults, f.name) for f in dataclasses.fields(defaults)}
    _check_keys(raw, set(fields), where)
    values: dict[str, Any] = {}
    for key, default in fields.items():
        value = _take(raw, key, (int, float), where, default)
        if value <= 0:
            raise ConfigError(f"{where}: {key} must be positive")
        values[key] = int(value) if key == "heartbeat_misses" else float(value)
    tuning = TunnelTuning(**values)
    if tuning.backoff_max_s > 8:
        raise ConfigError(f"{where}: backoff_max_s above 8 s breaks the 10 s reconnect promise")
    if tuning.heartbeat_s > 30:
        raise ConfigError(f"{where}: heartbeat_s above 30 s: the broker would drop the tunnel")
    if tuning.connect_timeout_s > 300:
        raise ConfigError(f"{where}: connect_timeout_s above 300 s")
    if tuning.redial_elsewhere_max_s > 300:
        raise ConfigError(f"{where}: redial_elsewhere_max_s above 300 s")
    if tuning.backoff_initial_s > tuning.backoff_max_s:
        raise ConfigError(f"{where}: backoff_initial_s is larger than backoff_max_s")
    return tuning


def parse_config(text: str, *, where: str = "config", base: Path | None = None) -> GatewayConfig:
    """Build the configuration from TOML text; raises ConfigError naming the problem."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from exc
    _check_keys(doc, {"gateway", "broker", "tunnel", "instrument"}, where)
    gw = _table(doc, "gateway", where)
    _check_keys(gw, {"name", "state_dir", "mode"}, f"{where} [gateway]")
    name = _take(gw, "name", str, f"{where} [gateway]")
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"{where} [gateway]: name is not [a-z0-9-]{{1,63}} "
            "(starting and ending with a letter or digit)"
        )
    state_dir = Path(_take(gw, "state_dir", str, f"{where} [gateway]"))
    if not state_dir.is_absolute() and base is not None:
        state_dir = base / state_dir
    mode_text = _take(gw, "mode", str, f"{where} [gateway]", "always")
    try:
        mode = Mode(mode_text)
    except ValueError as exc:
        raise ConfigError(f"{where} [gateway]: mode must be 'always' or 'window-only'") from exc
    broker = _table(doc, "broker", where)
    _check_keys(
        broker,
        {"api", "tunnel_host", "tunnel_port", "addresses", "min_tunnels"},
        f"{where} [broker]",
    )
    api = _take(broker, "api", str, f"{where} [broker]", "")
    if api and not api.startswith(("https://", "http://")):
        raise ConfigError(f"{where} [broker]: api must be an http(s) URL")
    tunnel_port = _take(broker, "tunnel_port", int, f"{where} [broker]", None)
    if tunnel_port is not None and not 1 <= tunnel_port <= 65535:
        raise ConfigError(f"{where} [broker]: tunnel_port out of range")
    addresses = _addresses(broker, f"{where} [broker]")
    min_tunnels = _take(
        broker, "min_tunnels", int, f"{where} [broker]", 2 if len(addresses) > 1 else 1
    )
    if not 1 <= min_tunnels <= MAX_ADDRESSES:
        raise ConfigError(f"{where} [broker]: min_tunnels must be 1..{MAX_ADDRESSES}")
    raw_instruments = doc.get("instrument", [])
    if not isinstance(raw_instruments, list):
        raise ConfigError(f"{where}: instruments are [[instrument]] tables")
    instruments = tuple(
        _instrument(r, f"{where} [[instrument]] #{i + 1}") for i, r in enumerate(raw_instruments)
    )
    names = [i.name for i in instruments]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: instrument names must be unique")
    return GatewayConfig(
        name=name,
        state_dir=state_dir,
        mode=mode,
        api=api,
        instruments=instruments,
        tunnel=_tuning(_table(doc, "tunnel", where), f"{where} [tunnel]"),
        tunnel_host=_take(broker, "tunnel_host", str, f"{where} [broker]", None),
        tunnel_port=tunnel_port,
        addresses=addresses,
        min_tunnels=min_tunnels,
    )


def load_config(path: Path) -> GatewayConfig:
    """Read and validate the configuration file (at most 1 MiB)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text") from exc
    return parse_config(text, where=str(path), base=path.parent)
