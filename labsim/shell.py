"""The command language of a simulated analyzer's service console.

Pure: it reads the analyzer's data directory and returns text; the SSH layer
(`labsim.analyzer`) only moves bytes. Commands::

    help                 list commands
    status               instrument state, temperatures, reagents, terminal size
    show log [n]         last n lines of the analyzer log (default 10, max 200)
    show qc              this month's QC results
    show config          the analyzer configuration
    calibrate <assay>    run a calibration (logged to the analyzer log)
    exit | quit | logout end the session
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from labsim.datatree import ASSAYS, AnalyzerFiles

MAX_LOG_LINES = 200
MAX_FILE_BYTES = 256 * 1024

HELP = """commands:
  help                 this list
  status               instrument state
  show log [n]         last n lines of the analyzer log (max 200)
  show qc              QC results of the month
  show config          analyzer configuration
  calibrate <assay>    calibrate one assay ({assays})
  exit                 end the session"""


@dataclass(frozen=True)
class Reply:
    """What a command printed, its exit status and whether the session ends."""

    text: str
    status: int = 0
    close: bool = False


def _utcnow() -> datetime:
    return datetime.now(UTC)


class AnalyzerConsole:
    """Interprets one command line at a time against an analyzer's files."""

    def __init__(
        self,
        *,
        name: str,
        model: str,
        files: AnalyzerFiles,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.name = name
        self.model = model
        self.files = files
        self._clock = clock
        self._started = clock()
        self.term_size: tuple[int, int] = (0, 0)

    @property
    def prompt(self) -> str:
        return f"{self.name}> "

    def banner(self) -> str:
        return f"{self.model} service console ({self.name}). Type 'help' for commands."

    def run(self, line: str) -> Reply:
        """Run one command line; unknown commands get status 127."""
        words = line.split()
        if not words:
            return Reply("")
        cmd, args = words[0].lower(), words[1:]
        if cmd in ("exit", "quit", "logout"):
            return Reply("bye", close=True)
        if cmd == "help":
            return Reply(HELP.format(assays=", ".join(ASSAYS)))
        if cmd == "status":
            return Reply(self._status())
        if cmd == "show" and args:
            return self._show(args[0].lower(), args[1:])
        if cmd == "calibrate":
            return self._calibrate(args)
        return Reply(f"unknown command: {words[0][:40]} (type 'help')", status=127)

    def _status(self) -> str:
        uptime = int((self._clock() - self._started).total_seconds())
        cols, rows = self.term_size
        return "\n".join(
            [
                f"instrument : {self.name} ({self.model})",
                "state      : READY",
                f"uptime     : {uptime}s",
                "incubator  : 37.0 C",
                "reagent    : " + ", ".join(f"{a} ok" for a in ASSAYS),
                f"terminal   : {cols}x{rows}",
            ]
        )

    def _show(self, what: str, args: list[str]) -> Reply:
        if what == "log":
            count = 10
            if args:
                if not args[0].isdigit():
                    return Reply("usage: show log [n]", status=2)
                count = min(int(args[0]), MAX_LOG_LINES)
            lines = _read_text(self.files.log).splitlines()
            return Reply("\n".join(lines[-count:]) if count else "")
        if what == "qc":
            return Reply(_read_text(self.files.qc).rstrip("\n"))
        if what == "config":
            return Reply(_read_text(self.files.config).rstrip("\n"))
        return Reply(f"unknown item: {what[:40]} (log, qc, config)", status=2)

    def _calibrate(self, args: list[str]) -> Reply:
        if len(args) != 1:
            return Reply("usage: calibrate <assay>", status=2)
        wanted = args[0].upper()
        assay = next((a for a in ASSAYS if a.upper() == wanted), None)
        if assay is None:
            return Reply(f"unknown assay: {args[0][:40]}", status=2)
        at = self._clock().strftime("%Y-%m-%d %H:%M:%S")
        line = f"{at} INFO  [CALIB] {assay} calibration accepted, factor 1.012"
        with self.files.log.open("a") as fh:
            fh.write(line + "\n")
        return Reply(f"calibrating {assay} ... done (factor 1.012)")


def _read_text(path: Path) -> str:
    with path.open("rb") as fh:
        return fh.read(MAX_FILE_BYTES).decode("utf-8", errors="replace")
