"""Put the figures of a results file into docs/benchmarks.md.

``python -m bench.render [RESULTS] [DOC]`` replaces the text between the
``<!-- bench:results -->`` and ``<!-- /bench:results -->`` markers with
tables made from the results file, so the document and ``results.json``
cannot disagree.  Everything outside the markers is left as written.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
START, END = "<!-- bench:results -->", "<!-- /bench:results -->"

ROWS: tuple[tuple[str, str, str, str], ...] = (
    # (what, hoshu key, OpenSSH chain key, direct OpenSSH key)
    (
        "Bulk throughput, session `cat` (MB/s)",
        "throughput_recorded_MBps",
        "throughput_openssh_chain_MBps",
        "throughput_openssh_direct_MBps",
    ),
    (
        "Bulk throughput, `ssh -L` forward (MB/s)",
        "throughput_forward_MBps",
        "throughput_openssh_chain_forward_MBps",
        "throughput_openssh_direct_forward_MBps",
    ),
    (
        "Session open, median (s)",
        "session_open_s",
        "session_open_openssh_chain_s",
        "session_open_openssh_direct_s",
    ),
    (
        "Session open, p95 (s)",
        "session_open_p95_s",
        "session_open_p95_openssh_chain_s",
        "session_open_p95_openssh_direct_s",
    ),
    (
        "Keystroke echo, p50 (ms)",
        "echo_p50_ms",
        "echo_p50_openssh_chain_ms",
        "echo_p50_openssh_direct_ms",
    ),
    (
        "Keystroke echo, p99 (ms)",
        "echo_p99_ms",
        "echo_p99_openssh_chain_ms",
        "echo_p99_openssh_direct_ms",
    ),
)


def _fmt(v: Any) -> str:
    if v is None:
        return "not measured"
    if isinstance(v, bool):
        return "yes" if v else "**no**"
    if isinstance(v, float):
        if abs(v) >= 1000 and v == int(v):
            return f"{int(v):,}"
        return f"{v:,.3f}".rstrip("0").rstrip(".") if abs(v) < 100 else f"{v:,.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _load(v: Any) -> str:
    return " / ".join(f"{x:.2f}" for x in v) if isinstance(v, list) else "unknown"


def _run_line(r: dict[str, Any]) -> str:
    """One merged run: when, how long, which sections, on what, under which load."""
    start, end = r.get("loadavg_at_start"), r.get("loadavg_at_end")
    load = (
        f"load {start[0]:.1f} → {end[0]:.1f}"
        if isinstance(start, list) and isinstance(end, list)
        else "load unknown"
    )
    took = f", {r['total_seconds']} s" if r.get("total_seconds") is not None else ""
    cpu = f", {r['cpu']}" if r.get("cpu") else ""
    return f"{r.get('generated_at')}{took}{cpu}, {load}: {', '.join(r.get('sections') or [])}"


def tables(doc: dict[str, Any]) -> str:
    m = doc.get("machine", {})
    runs = doc.get("runs") or []
    out = (
        ["Runs merged into this file (`python -m bench --merge`), oldest first:", ""]
        + [f"- {_run_line(r)}" for r in runs]
        + [""]
        if len(runs) > 1
        else []
    )
    out += [
        f"Run: `{doc.get('mode')}` mode, {doc.get('generated_at')}, "
        f"{doc.get('total_seconds')} s in all. Cipher `{doc.get('cipher')}`, key exchange "
        f"`{str(doc.get('kex', '')).split(',')[0]}` on every hop. Payload "
        f"{_fmt(doc.get('sizes', {}).get('throughput_bytes'))} bytes per transfer.",
        "",
        f"Machine: {m.get('cpus')} × {m.get('cpu')}, {_fmt(m.get('memory_MiB'))} MiB, "
        f"{m.get('os')}, kernel {m.get('kernel')}, Python {m.get('python')}, "
        f"asyncssh {m.get('asyncssh')}, {m.get('openssh')}. Load average (1/5/15 min) "
        f"{_load(m.get('loadavg_at_start'))} at the start, {_load(m.get('loadavg_at_end'))} "
        "at the end: other work shared the machine."
        + (
            " (This line is the latest run's; the list above gives each run's.)"
            if len(runs) > 1
            else ""
        ),
        "",
        "| measure | hoshu | OpenSSH chain | direct OpenSSH |",
        "|---|---:|---:|---:|",
    ]
    for what, h, c, d in ROWS:
        out.append(f"| {what} | {_fmt(doc.get(h))} | {_fmt(doc.get(c))} | {_fmt(doc.get(d))} |")
    out += ["", "| scale and audit | value |", "|---|---:|"]
    scale_keys = [
        k
        for k in sorted(doc)
        if k.startswith(("gateways_", "broker_", "reconnect_", "session_opens_"))
    ]
    for key in (
        *scale_keys,
        "audit_append_per_s",
        "audit_append_unsigned_per_s",
        "audit_append_batched_per_s",
        "audit_build_and_append_per_s",
        "audit_query_p50_ms_sqlite",
        "audit_query_p95_ms_sqlite",
        "audit_query_p50_ms_postgres",
        "audit_query_p95_ms_postgres",
    ):
        if key in doc:
            out.append(f"| `{key}` | {_fmt(doc[key])} |")
    out += ["", "| target | measure | value | met |", "|---|---|---:|:---:|"]
    for t in doc.get("targets", {}).values():
        value = _fmt(t["value"]) if "why" not in t else t["why"]
        out.append(
            f"| {t['target']} | `{t['measure']}` | {value} | "
            f"{'—' if t['met'] is None else _fmt(t['met'])} |"
        )
    if doc.get("notes"):
        out += ["", "Notes written by the run:", ""]
        out += [f"- {n}" for n in doc["notes"]]
    return "\n".join(out)


WHATIF_START, WHATIF_END = "<!-- bench:whatif -->", "<!-- /bench:whatif -->"
VARIANTS = (
    ("default", "hoshu as built"),
    ("tunnel", "+ 256 KiB tunnel channel packets"),
    ("chain", "OpenSSH chain"),
)


def whatif_table(doc: dict[str, Any]) -> str:
    """The table of a what-if experiment file (``python -m bench.whatif``)."""
    mean = doc["mean"]
    out = [
        f"What-if experiment (`python -m bench.whatif`, {doc.get('generated_at')}, "
        f"{_fmt(doc.get('bytes'))} bytes per transfer, {doc.get('rounds')} rounds, "
        "interleaved; changes made inside the benchmark's broker and gateway processes "
        "only, not in the product):",
        "",
        "| variant | recorded `cat` MB/s | `ssh -L` MB/s | echo p50 ms | echo p99 ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for key, label in VARIANTS:
        out.append(
            f"| {label} | {_fmt(mean.get(key + '_rec_MBps'))} | "
            f"{_fmt(mean.get(key + '_fwd_MBps'))} | "
            f"{_fmt(mean.get(key + '_echo_p50_ms'))} | "
            f"{_fmt(mean.get(key + '_echo_p99_ms'))} |"
        )
    return "\n".join(out)


def _between(text: str, start: str, end: str, body: str, page: Path) -> str:
    if start not in text or end not in text:
        raise SystemExit(f"{page} has no {start} ... {end} markers")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}\n{end}{tail}"


def render(results: Path, page: Path, whatif: Path | None = None) -> None:
    text = _between(page.read_text(), START, END, tables(json.loads(results.read_text())), page)
    if whatif is not None and whatif.exists():
        text = _between(
            text, WHATIF_START, WHATIF_END, whatif_table(json.loads(whatif.read_text())), page
        )
    page.write_text(text)


def main(argv: list[str]) -> int:
    results = Path(argv[0]) if argv else HERE / "results.json"
    page = Path(argv[1]) if len(argv) > 1 else HERE.parent / "docs" / "benchmarks.md"
    render(results, page, results.with_name("whatif.json"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
