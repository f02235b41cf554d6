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
    ("Bulk throughput, session `cat` (MB/s)", "throughput_recorded_MBps",
     "throughput_openssh_chain_MBps", "throughput_openssh_direct_MBps"),
    ("Bulk throughput, `ssh -L` forward (MB/s)", "throughput_forward_MBps",
     "throughput_openssh_chain_forward_MBps", "throughput_openssh_direct_forward_MBps"),
    ("Session open, median (s)", "session_open_s", "session_open_openssh_chain_s",
     "session_open_openssh_direct_s"),
    ("Session open, p95 (s)", "session_open_p95_s", "session_open_p95_openssh_chain_s",
     "session_open_p95_openssh_direct_s"),
    ("Keystroke echo, p50 (ms)", "echo_p50_ms", "echo_p50_openssh_chain_ms",
     "echo_p50_openssh_direct_ms"),
    ("Keystroke echo, p99 (ms)", "echo_p99_ms", "echo_p99_openssh_chain_ms",
     "echo_p99_openssh_direct_ms"),
)


def _fmt(v: Any) -> str:
    if v is None:
        return "not measured"
    if isinstance(v, bool):
        return "yes" if v else "**no**"
    if isinstance(v, float):
        return f"{v:,.3f}".rstrip("0").rstrip(".") if abs(v) < 100 else f"{v:,.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def tables(doc: dict[str, Any]) -> str:
    m = doc.get("machine", {})
    out = [
        f"Run: `{doc.get('mode')}` mode, {doc.get('generated_at')}, "
        f"{doc.get('total_seconds')} s in all. Cipher `{doc.get('cipher')}`, key exchange "
        f"`{str(doc.get('kex', '')).split(',')[0]}` on every hop. Payload "
        f"{_fmt(doc.get('sizes', {}).get('throughput_bytes'))} bytes per transfer.",
        "",
        f"Machine: {m.get('cpus')} × {m.get('cpu')}, {_fmt(m.get('memory_MiB'))} MiB, "
        f"{m.get('os')}, kernel {m.get('kernel')}, Python {m.get('python')}, "
        f"asyncssh {m.get('asyncssh')}, {m.get('openssh')}. Load average "
        f"{m.get('loadavg_at_start')} at the start, {m.get('loadavg_at_end')} at the end.",
        "",
        "| measure | hoshu | OpenSSH chain | direct OpenSSH |",
        "|---|---:|---:|---:|",
    ]
    for what, h, c, d in ROWS:
        out.append(f"| {what} | {_fmt(doc.get(h))} | {_fmt(doc.get(c))} | {_fmt(doc.get(d))} |")
    out += ["", "| scale and audit | value |", "|---|---:|"]
    scale_keys = sorted(k for k in doc if k.startswith("broker_rss_MiB_at_")
                        and k[18:-9].isdigit())
    for key in ("gateways_connected", *scale_keys, "broker_rss_MiB_at_max_gateways",
                "reconnect_all_s", "reconnect_all_s_at_5000_gateways",
                "session_opens_per_s", "session_opens_sequential_per_s",
                "audit_append_per_s", "audit_append_unsigned_per_s",
                "audit_append_batched_per_s", "audit_build_and_append_per_s",
                "audit_query_p50_ms_sqlite", "audit_query_p95_ms_sqlite",
                "audit_query_p50_ms_postgres", "audit_query_p95_ms_postgres"):
        if key in doc:
            out.append(f"| `{key}` | {_fmt(doc[key])} |")
    out += ["", "| target | measure | value | met |", "|---|---|---:|:---:|"]
    for t in doc.get("targets", {}).values():
        value = _fmt(t["value"]) if "why" not in t else t["why"]
        out.append(f"| {t['target']} | `{t['measure']}` | {value} | "
                   f"{'—' if t['met'] is None else _fmt(t['met'])} |")
    if doc.get("notes"):
        out += ["", "Notes written by the run:", ""]
        out += [f"- {n}" for n in doc["notes"]]
    return "\n".join(out)


def render(results: Path, page: Path) -> None:
    doc = json.loads(results.read_text())
    text = page.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{page} has no {START} ... {END} markers")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    page.write_text(f"{head}{START}\n{tables(doc)}\n{END}{tail}")


def main(argv: list[str]) -> int:
    results = Path(argv[0]) if argv else HERE / "results.json"
    page = Path(argv[1]) if len(argv) > 1 else HERE.parent / "docs" / "benchmarks.md"
    render(results, page)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
