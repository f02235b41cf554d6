"""The files an analyzer PC holds: logs, QC results, configuration.

The content is generated deterministically from the instrument name, so tests
can assert on it and two runs of the lab look the same. Layout::

    <data_dir>/logs/analyzer.log
    <data_dir>/qc/<YYYY-MM>-qc.csv
    <data_dir>/config/analyzer.ini
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

# assay code -> (unit, level 1 target, level 2 target, sd as a fraction of target)
ASSAYS: dict[str, tuple[str, float, float, float]] = {
    "GLU": ("mg/dL", 95.0, 280.0, 0.02),
    "CREA": ("mg/dL", 0.95, 4.8, 0.03),
    "ALT": ("U/L", 32.0, 160.0, 0.04),
    "AST": ("U/L", 35.0, 170.0, 0.04),
    "CRP": ("mg/dL", 0.45, 5.2, 0.05),
    "HbA1c": ("%", 5.4, 9.8, 0.02),
}
QC_HEADER = "date,assay,level,lot,value,unit,target,sd,z,westgard"
LOG_EVENTS = (
    "INFO  [SAMPLE] rack {rack} pos {pos} aspirated, cup S{cup:05d}",
    "INFO  [RESULT] S{cup:05d} {assay} measured, flags none",
    "INFO  [REAGENT] {assay} cassette remaining {left} tests",
    "WARN  [TEMP] incubator 37.{t}C outside 37.0±0.1C for 4s, recovered",
    "INFO  [MAINT] probe wash cycle complete",
)


@dataclass(frozen=True)
class AnalyzerFiles:
    """Paths of the files that make up one analyzer's data directory."""

    root: Path
    month: str

    @property
    def log(self) -> Path:
        return self.root / "logs" / "analyzer.log"

    @property
    def qc(self) -> Path:
        return self.root / "qc" / f"{self.month}-qc.csv"

    @property
    def config(self) -> Path:
        return self.root / "config" / "analyzer.ini"


def _config_text(name: str, model: str, serial: str) -> str:
    return "\n".join(
        [
            "; analyzer configuration (service use only)",
            "[instrument]",
            f"name = {name}",
            f"model = {model}",
            f"serial = {serial}",
            "software = 06.02.1 build 4471",
            "",
            "[host_interface]",
            "protocol = HL7 v2.5.1 over MLLP",
            "lis_host = lis-hl7",
            "lis_port = 2575",
            "",
            "[assays]",
            "enabled = " + ",".join(ASSAYS),
            "",
            "[qc]",
            "rules = 1-3s,2-2s,R-4s",
            "levels = 2",
            "",
        ]
    )


def _qc_rows(rng: random.Random, start: datetime, days: int) -> list[str]:
    rows = [QC_HEADER]
    for day in range(days):
        date = (start + timedelta(days=day)).strftime("%Y-%m-%d")
        for assay, (unit, t1, t2, sd_frac) in ASSAYS.items():
            for level, target in ((1, t1), (2, t2)):
                sd = target * sd_frac
                z = max(-3.4, min(3.4, rng.gauss(0.0, 1.0)))
                value = target + z * sd
                verdict = "reject 1-3s" if abs(z) > 3 else ("warn 1-2s" if abs(z) > 2 else "accept")
                lot = f"QC{level}-{start:%y%m}{level}"
                rows.append(
                    f"{date},{assay},{level},{lot},{value:.3g},{unit},{target:g},{sd:.3g},"
                    f"{z:+.2f},{verdict}"
                )
    return rows


def _log_lines(rng: random.Random, start: datetime, count: int) -> list[str]:
    lines = [f"{start:%Y-%m-%d %H:%M:%S} INFO  [SYSTEM] analyzer started, state STANDBY"]
    at = start
    for i in range(count):
        at += timedelta(seconds=rng.randint(5, 90))
        template = LOG_EVENTS[rng.randrange(len(LOG_EVENTS))]
        text = template.format(
            rack=50000 + i // 5,
            pos=1 + i % 5,
            cup=i + 1,
            assay=rng.choice(list(ASSAYS)),
            left=rng.randint(20, 800),
            t=rng.randint(2, 3),
        )
        lines.append(f"{at:%Y-%m-%d %H:%M:%S} {text}")
    return lines


def write_analyzer_tree(
    root: Path,
    *,
    name: str,
    model: str,
    month: str = "2026-11",
    log_lines: int = 120,
) -> AnalyzerFiles:
    """Create (or refresh) the data directory of one analyzer PC under `root`."""
    rng = random.Random(f"labsim:{name}")  # noqa: S311 - simulated data, not security
    start = datetime.strptime(month + "-02 07:30:00", "%Y-%m-%d %H:%M:%S")
    files = AnalyzerFiles(root=root, month=month)
    for path in (files.log, files.qc, files.config):
        path.parent.mkdir(parents=True, exist_ok=True)
    serial = f"{rng.randint(10000, 99999)}-{rng.randint(10, 99)}"
    files.config.write_text(_config_text(name, model, serial))
    files.qc.write_text("\n".join(_qc_rows(rng, start, days=5)) + "\n")
    files.log.write_text("\n".join(_log_lines(rng, start, log_lines)) + "\n")
    return files
