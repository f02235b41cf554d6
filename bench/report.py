"""The results file: required keys, ratios against the OpenSSH chain, targets.

Every figure is a number with its unit in the key name, or ``None`` (JSON
``null``) when it was not measured, in which case :attr:`Results.notes` says
why.  Ratios and target verdicts are derived here from the measured figures
only, so a missing figure gives a missing ratio and an unknown verdict.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REQUIRED_KEYS: tuple[str, ...] = (
    "throughput_forward_MBps",
    "throughput_recorded_MBps",
    "throughput_openssh_chain_MBps",
    "throughput_openssh_direct_MBps",
    "session_open_s",
    "session_open_openssh_chain_s",
    "echo_p99_ms",
    "echo_p99_openssh_chain_ms",
    "gateways_connected",
    "broker_rss_MiB_at_max_gateways",
    "reconnect_all_s",
    "audit_append_per_s",
    "audit_query_p95_ms_sqlite",
    "audit_query_p95_ms_postgres",
)

# (ratio name, numerator, denominator)
RATIOS: tuple[tuple[str, str, str], ...] = (
    (
        "forward_vs_chain_forward",
        "throughput_forward_MBps",
        "throughput_openssh_chain_forward_MBps",
    ),
    ("forward_vs_chain", "throughput_forward_MBps", "throughput_openssh_chain_MBps"),
    ("recorded_vs_chain", "throughput_recorded_MBps", "throughput_openssh_chain_MBps"),
    ("chain_vs_direct", "throughput_openssh_chain_MBps", "throughput_openssh_direct_MBps"),
    ("session_open_vs_chain", "session_open_s", "session_open_openssh_chain_s"),
    ("echo_p99_vs_chain", "echo_p99_ms", "echo_p99_openssh_chain_ms"),
    ("echo_p50_vs_chain", "echo_p50_ms", "echo_p50_openssh_chain_ms"),
    # hoshu as deployed (``hoshu serve``, bench.deployed / bench.concurrency)
    *(
        (f"{name}_deployed_{store}_vs_chain", f"{key}_deployed_{store}", chain)
        for store in ("sqlite", "postgres")
        for name, key, chain in (
            ("recorded", "throughput_recorded_MBps", "throughput_openssh_chain_MBps"),
            ("session_open", "session_open_s", "session_open_openssh_chain_s"),
            ("echo_p99", "echo_p99_ms", "echo_p99_openssh_chain_ms"),
        )
    ),
    ("broker_cpu_vs_sshd_per_GB", "broker_cpu_s_per_GB_recorded", "sshd_cpu_s_per_GB_chain"),
)

# (difference name, minuend, subtrahend): reported with the ratios
DIFFERENCES: tuple[tuple[str, str, str], ...] = tuple(
    (
        f"echo_p99_deployed_{store}_minus_chain_ms",
        f"echo_p99_ms_deployed_{store}",
        "echo_p99_openssh_chain_ms",
    )
    for store in ("sqlite", "postgres")
)


@dataclass(frozen=True)
class Target:
    name: str
    key: str  # a figure or a ratio
    op: str  # ">=" or "<="
    bound: float
    text: str
    # met also when this other measure meets its bound (e.g. "1.5 x, or +0.5 ms")
    or_key: str = ""
    or_bound: float = 0.0


TARGETS: tuple[Target, ...] = (
    Target(
        "forward_throughput",
        "ratio.forward_vs_chain_forward",
        ">=",
        1.0,
        "hoshu port forward >= 1.0 x the OpenSSH chain's forward",
    ),
    Target(
        "recorded_throughput",
        "ratio.recorded_vs_chain",
        ">=",
        0.8,
        "hoshu recorded session >= 0.8 x the OpenSSH chain",
    ),
    Target(
        "session_open",
        "ratio.session_open_vs_chain",
        "<=",
        1.5,
        "hoshu session open (with MFA) <= 1.5 x the OpenSSH chain",
    ),
    Target(
        "echo_p99",
        "ratio.echo_p99_vs_chain",
        "<=",
        1.5,
        "hoshu echo p99 <= 1.5 x the OpenSSH chain",
    ),
    Target(
        "broker_rss_5000",
        "broker_rss_MiB_at_5000_gateways",
        "<=",
        512.0,
        "5,000 connected gateways under 512 MiB broker RSS",
    ),
    Target(
        "reconnect_all",
        "reconnect_all_s",
        "<=",
        60.0,
        "all gateways reconnected within 60 s of a broker restart",
    ),
    Target("audit_append", "audit_append_per_s", ">=", 10_000.0, "audit append >= 10,000 events/s"),
    Target(
        "command_lines_exact",
        "commands_exact_ratio",
        ">=",
        0.98,
        "shell command lines read back exactly >= 98% of the corpus",
    ),
    Target("commands_invented", "commands_invented", "<=", 0.0, "no invented shell commands"),
    *(
        t
        for store in ("sqlite", "postgres")
        for t in (
            Target(
                f"recorded_deployed_{store}",
                f"ratio.recorded_deployed_{store}_vs_chain",
                ">=",
                1.0,
                f"recorded session through hoshu serve ({store}) >= 1.0 x the OpenSSH chain",
            ),
            Target(
                f"session_open_deployed_{store}",
                f"ratio.session_open_deployed_{store}_vs_chain",
                "<=",
                1.0,
                f"session open with MFA through hoshu serve ({store}) <= 1.0 x the chain",
            ),
            Target(
                f"echo_p99_deployed_{store}",
                f"ratio.echo_p99_deployed_{store}_vs_chain",
                "<=",
                1.5,
                f"echo p99 through hoshu serve ({store}) <= 1.5 x the chain or <= +0.5 ms",
                or_key=f"ratio.echo_p99_deployed_{store}_minus_chain_ms",
                or_bound=0.5,
            ),
        )
    ),
    Target(
        "echo_p99_at_50_sessions",
        "echo_p99_ms_at_50_sessions",
        "<=",
        5.0,
        "echo p99 <= 5 ms with 50 concurrent recorded sessions",
    ),
    Target(
        "broker_cpu_per_GB",
        "ratio.broker_cpu_vs_sshd_per_GB",
        "<=",
        3.0,
        "broker CPU per recorded GB <= 3 x the bastion sshd's per GB",
    ),
    Target(
        "audit_query_sqlite",
        "audit_query_p95_ms_sqlite",
        "<=",
        100.0,
        "audit query p95 <= 100 ms over 1M events (SQLite)",
    ),
    Target(
        "audit_query_postgres",
        "audit_query_p95_ms_postgres",
        "<=",
        100.0,
        "audit query p95 <= 100 ms over 1M events (PostgreSQL)",
    ),
)


@dataclass
class Results:
    """Figures as they are measured, plus why any are missing."""

    mode: str
    figures: dict[str, float | int | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    progress: Path | None = None  # rewritten after every section while the run goes on
    # targets known to be missed although their figure could not be taken (the reason)
    failed: dict[str, str] = field(default_factory=dict)

    def put(self, key: str, value: float | int | None, ndigits: int = 3) -> None:
        self.figures[key] = round(value, ndigits) if isinstance(value, float) else value

    def missing(self, keys: list[str] | tuple[str, ...], reason: str) -> None:
        """Record ``keys`` as not measured, for ``reason``."""
        for key in keys:
            self.figures.setdefault(key, None)
        self.notes.append(f"not measured: {', '.join(keys)}: {reason}")

    def section(self, name: str, keys: list[str], fn: Callable[[], None]) -> None:
        """Run one section; if it fails, its unmeasured ``keys`` get the reason as a note."""
        t0 = time.monotonic()
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        try:
            fn()
        except Exception as exc:  # a failed section is reported, the run goes on
            traceback.print_exc()
            self.missing(
                [k for k in keys if self.figures.get(k) is None],
                f"the {name} section failed: {type(exc).__name__}: {exc}",
            )
        took = time.monotonic() - t0
        self.info.setdefault("section_seconds", {})[name] = round(took, 1)
        print(f"[bench] {name} done in {took:.1f} s", file=sys.stderr, flush=True)
        if self.progress is not None:
            Results(
                self.mode,
                dict(self.figures),
                list(self.notes),
                dict(self.info),
                failed=dict(self.failed),
            ).write(self.progress)

    def ratios(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for name, num, den in RATIOS:
            a, b = self.figures.get(num), self.figures.get(den)
            out[name] = round(a / b, 3) if a is not None and b else None
        for name, num, sub in DIFFERENCES:
            a, b = self.figures.get(num), self.figures.get(sub)
            out[name] = round(a - b, 4) if a is not None and b is not None else None
        return out

    def verdicts(self, ratios: dict[str, float | None]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}

        def measure(key: str) -> float | int | None:
            return ratios.get(key[6:]) if key.startswith("ratio.") else self.figures.get(key)

        def meets(value: float | int | None, op: str, bound: float) -> bool | None:
            return None if value is None else (value >= bound if op == ">=" else value <= bound)

        for t in TARGETS:
            value = measure(t.key)
            met = meets(value, t.op, t.bound)
            if t.or_key and met is False:
                alt = meets(measure(t.or_key), t.op, t.or_bound)
                met = True if alt else met
            out[t.name] = {
                "target": t.text,
                "measure": t.key,
                "op": t.op,
                "bound": t.bound,
                "value": value,
                "met": met,
            }
            if value is None and t.name in self.failed:
                out[t.name].update(met=False, why=self.failed[t.name])
        return out

    def document(self) -> dict[str, Any]:
        for key in REQUIRED_KEYS:
            if key not in self.figures:
                self.missing([key], "no benchmark section produced it")
        ratios = self.ratios()
        doc: dict[str, Any] = {
            "schema": 1,
            "mode": self.mode,
            "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        doc.update(dict(sorted(self.figures.items())))
        doc["ratios"] = ratios
        doc["targets"] = self.verdicts(ratios)
        doc.update(self.info)
        doc["notes"] = self.notes
        return doc

    def write(self, path: Path) -> dict[str, Any]:
        doc = self.document()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
        tmp.replace(path)
        return doc


def _first_line(argv: list[str]) -> str | None:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else None


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = "unknown"
    try:
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = m.group(1) if m else cpu
    except OSError:
        pass
    mem_mib = None
    try:
        m2 = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
        mem_mib = int(m2.group(1)) // 1024 if m2 else None
    except OSError:
        pass
    os_name = platform.platform()
    try:
        m3 = re.search(r'^PRETTY_NAME="(.+)"', Path("/etc/os-release").read_text(), re.M)
        os_name = m3.group(1) if m3 else os_name
    except OSError:
        pass
    import asyncssh

    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_MiB": mem_mib,
        "os": os_name,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "asyncssh": asyncssh.__version__,
        "openssh": _first_line(["ssh", "-V"]),
        "loadavg_at_start": list(os.getloadavg()),
        "started_at_unix": round(time.time()),
    }
