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
    # hoshu as deployed (``hoshu serve``): bench.deployed, bench.concurrency
    "echo_p99_ms_at_50_sessions",
    "throughput_aggregate_MBps_at_50_sessions",
    "broker_cpu_s_per_GB_recorded",
    "sshd_cpu_s_per_GB_chain",
    "broker_rss_MiB_per_session",
    "logins_per_s_100_engineers",
    "channel_opens_per_s",
    "channel_opens_per_s_asyncssh_floor",
    "audit_append_durable_per_s",
    "audit_query_p95_ms_postgres_10M",
)

# figures recorded under two names: (new name, old name), so readers of either keep working
ALIASES: tuple[tuple[str, str], ...] = (
    ("channel_opens_per_s", "session_opens_per_s"),
    ("channel_opens_per_s_asyncssh_floor", "session_opens_per_s_asyncssh_floor"),
    ("channel_opens_sequential_per_s", "session_opens_sequential_per_s"),
    (
        "channel_opens_sequential_per_s_asyncssh_floor",
        "session_opens_sequential_per_s_asyncssh_floor",
    ),
)
# top-level keys of the file that are neither figures nor run information
DERIVED = ("schema", "mode", "generated_at", "ratios", "targets", "notes", "sections", "runs")

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
    (
        "channel_opens_vs_asyncssh_floor",
        "channel_opens_per_s",
        "channel_opens_per_s_asyncssh_floor",
    ),
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


_ALIAS: dict[str, tuple[str, ...]] = {}
for _new, _old in ALIASES:
    _ALIAS.setdefault(_new, ())
    _ALIAS[_new] += (_old,)
    _ALIAS.setdefault(_old, ())
    _ALIAS[_old] += (_new,)


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
        "gateways_10000",
        "gateways_connected",
        ">=",
        10_000.0,
        "10,000 hoshu gateways connected to one broker",
    ),
    Target(
        "broker_rss_10000",
        "broker_rss_MiB_at_10000_gateways",
        "<=",
        1024.0,
        "10,000 connected gateways under 1 GiB broker RSS",
    ),
    Target(
        "reconnect_all_10000",
        "reconnect_all_s_at_10000_gateways",
        "<=",
        60.0,
        "all 10,000 gateways reconnected within 60 s of a broker restart",
    ),
    Target(
        "channel_opens",
        "ratio.channel_opens_vs_asyncssh_floor",
        ">=",
        0.5,
        "channel opens through hoshu's tunnels >= 50% of the bare asyncssh floor",
    ),
    Target(
        "audit_append_durable",
        "audit_append_durable_per_s",
        ">=",
        20_000.0,
        "durable audit append (PostgreSQL, fsync on) >= 20,000 events/s",
    ),
    Target(
        "audit_query_postgres_10M",
        "audit_query_p95_ms_postgres_10M",
        "<=",
        50.0,
        "audit query p95 <= 50 ms over 10M events (PostgreSQL)",
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
    # per section: when it ran, the load average at its start and end, its notes
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)

    def put(self, key: str, value: float | int | None, ndigits: int = 3) -> None:
        value = round(value, ndigits) if isinstance(value, float) else value
        for name in (key, *_ALIAS.get(key, ())):
            self.figures[name] = value

    def missing(self, keys: list[str] | tuple[str, ...], reason: str) -> None:
        """Record ``keys`` (and their aliases) as not measured, for ``reason``."""
        names = [n for key in keys for n in (key, *_ALIAS.get(key, ()))]
        for key in names:
            self.figures.setdefault(key, None)
        self.notes.append(f"not measured: {', '.join(names)}: {reason}")

    def section(self, name: str, keys: list[str], fn: Callable[[], None]) -> None:
        """Run one section; if it fails, its unmeasured ``keys`` get the reason as a note."""
        t0 = time.monotonic()
        load0, notes0 = _loadavg(), len(self.notes)
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
        # the machine is shared: what else ran beside each section, for reading its figures
        self.sections[name] = {
            "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "mode": self.mode,
            "seconds": round(took, 1),
            "loadavg_at_start": load0,
            "loadavg_at_end": _loadavg(),
            "keys": list(keys),
            "notes": self.notes[notes0:],
        }
        print(f"[bench] {name} done in {took:.1f} s", file=sys.stderr, flush=True)
        if self.progress is not None:
            Results(
                self.mode,
                dict(self.figures),
                list(self.notes),
                dict(self.info),
                failed=dict(self.failed),
                sections=dict(self.sections),
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
        doc["sections"] = self.sections
        doc["notes"] = self.notes
        return doc

    def write(self, path: Path, merge: bool = False) -> dict[str, Any]:
        """Write the results file; with ``merge``, into the one at ``path`` (:func:`merge`)."""
        doc = self.document()
        if merge and path.exists():
            doc = merge_documents(json.loads(path.read_text()), doc)
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


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _is_figure(key: str, value: object) -> bool:
    if key in DERIVED or key == "total_seconds" or isinstance(value, bool):
        return False
    return value is None or isinstance(value, int | float)


def _names(note: str, keys: set[str]) -> bool:
    words = set(re.findall(r"[A-Za-z0-9_]+", note))
    return not words.isdisjoint(keys)


def _run_summary(doc: dict[str, Any]) -> dict[str, Any]:
    m = doc.get("machine") or {}
    return {
        "generated_at": doc.get("generated_at"),
        "mode": doc.get("mode"),
        "sections": list((doc.get("section_seconds") or {}).keys()),
        "loadavg_at_start": m.get("loadavg_at_start"),
        "loadavg_at_end": m.get("loadavg_at_end"),
        "total_seconds": doc.get("total_seconds"),
        "cpu": m.get("cpu"),
        "kernel": m.get("kernel"),
    }


def current_notes(notes: list[str], doc: dict[str, Any]) -> list[str]:
    """``notes`` without repeats, and true of ``doc``: a "not measured" note about figures
    ``doc`` has as numbers (kept from an earlier run) says so, or goes if it only said
    that no section of the latest run produced them."""
    out: list[str] = []
    for note in dict.fromkeys(notes):
        m = _NOT_MEASURED.match(note)
        if m and all(isinstance(doc.get(k), int | float) for k in m.group(1).split(", ")):
            if m.group(2) == "no benchmark section produced it":
                continue
            if not note.endswith(_EARLIER):
                note += _EARLIER
        out.append(note)
    return out


_EARLIER = " (the figure in the file is from an earlier run)"
_NOT_MEASURED = re.compile(r"^not measured: ([A-Za-z0-9_, ]+): (.*?)(?: \(the figure.*)?$", re.S)


def merge_documents(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``old`` with the figures ``new`` measured in place of its own; the rest kept.

    A figure ``new`` has as a number replaces ``old``'s; a figure ``new`` could not take
    (``null``) leaves ``old``'s number, and the reason stays in ``new``'s section notes.
    ``old``'s notes that name a figure measured anew are dropped (they spoke of the old
    figure), the others kept; ``sections`` (per section: when, load average, notes) are
    replaced section by section; ``runs`` lists every run merged in, with its load
    average.  Ratios and target verdicts are derived again from the merged figures."""
    figures = {k: v for k, v in old.items() if _is_figure(k, v)}
    measured = {k for k, v in new.items() if _is_figure(k, v) and v is not None}
    for key, value in new.items():
        if _is_figure(key, value) and (value is not None or key not in figures):
            figures[key] = value
    info: dict[str, Any] = {
        k: v for k, v in old.items() if k not in DERIVED and not _is_figure(k, v)
    }
    for key, value in new.items():
        if key in DERIVED or _is_figure(key, value):
            continue
        if isinstance(value, dict) and isinstance(info.get(key), dict):
            info[key] = {**info[key], **value}
        else:
            info[key] = value
    notes = [n for n in old.get("notes", []) if not _names(n, measured)]
    notes += [n for n in new.get("notes", []) if n not in notes]
    failed = {
        name: t["why"]
        for doc in (old, new)
        for name, t in (doc.get("targets") or {}).items()
        if "why" in t and t.get("measure") not in measured
    }
    mode = old.get("mode") if old.get("mode") == new.get("mode") else "merged"
    res = Results(
        str(mode),
        figures,
        notes,
        info,
        failed=failed,
        sections={**(old.get("sections") or {}), **(new.get("sections") or {})},
    )
    doc = res.document()
    doc["notes"] = current_notes(doc["notes"], doc)
    doc["runs"] = [*(old.get("runs") or [_run_summary(old)]), _run_summary(new)]
    return doc
