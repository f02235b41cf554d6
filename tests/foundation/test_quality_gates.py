"""The quality gates: pre-commit runs exactly ./run test's gates, and the coverage floor
only rises."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
VENV_BIN = ".venv/bin/"


def _run_gates() -> list[list[str]]:
    """The commands of ./run's quality_gates function, in order (``say`` lines left out)."""
    script = (ROOT / "run").read_text()
    body = re.search(r"^quality_gates\(\) \{\n(.*?)^\}\n", script, re.M | re.S)
    assert body, "quality_gates not found in ./run"
    lines = [line.strip() for line in body.group(1).splitlines()]
    return [shlex.split(line) for line in lines if line and not line.startswith(("say ", "#"))]


def _hooks() -> list[dict[str, Any]]:
    config = YAML(typ="safe").load((ROOT / ".pre-commit-config.yaml").read_text())
    repos = config["repos"]
    assert [r["repo"] for r in repos] == ["local"] * len(repos)  # nothing to download
    return [h for r in repos for h in r["hooks"]]


def _hook_command(hook: dict[str, Any]) -> list[str]:
    """The hook's command as ./run spells it (tools found on PATH, which is .venv/bin)."""
    argv = shlex.split(hook["entry"]) + list(hook.get("args", []))
    assert argv[0].startswith(VENV_BIN), f"{hook['id']}: not the project venv's tool"
    return [argv[0].removeprefix(VENV_BIN), *argv[1:]]


def _same_gate(run: list[str], hook: dict[str, Any]) -> bool:
    command = _hook_command(hook)
    if not hook.get("pass_filenames", True):
        return command == run
    # pre-commit hands the files over: ./run's last argument is the glob they match
    *run_command, glob = run
    files = sorted(ROOT.glob(glob))
    pattern = re.compile(hook["files"])
    return (
        command == run_command
        and bool(files)
        and all(pattern.search(str(f.relative_to(ROOT))) for f in files)
    )


def test_pre_commit_hooks_run_the_same_gates_as_run_test_in_the_same_order() -> None:
    gates = _run_gates()
    assert [g[0] for g in gates] == [
        "ruff",
        "ruff",
        "mypy",
        "lint-imports",
        "check-jsonschema",
        "zizmor",
    ]
    hooks = [h for h in _hooks() if "manual" not in h.get("stages", [])]
    assert len(hooks) == len(gates), [h["id"] for h in hooks]
    for gate, hook in zip(gates, hooks, strict=True):
        assert hook["language"] == "system", hook["id"]
        assert _same_gate(gate, hook), f"{hook['id']}: {_hook_command(hook)} != {gate}"


def test_ruff_format_is_a_gate_on_every_commit() -> None:
    """The tree is formatted: ``ruff format --check`` runs in ./run test and before each
    commit, and no hook waits in the manual stage."""
    assert ["ruff", "format", "--check", "."] in _run_gates()
    assert not [h for h in _hooks() if "manual" in h.get("stages", [])]


def test_pre_commit_accepts_the_config_and_runs_a_gate_offline(tmp_path: Path) -> None:
    env = {**os.environ, "PRE_COMMIT_HOME": str(tmp_path / "cache")}
    pre_commit = str(BIN / "pre-commit")
    check = subprocess.run(
        [pre_commit, "validate-config", ".pre-commit-config.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    # --all-files: pre-commit stashes nothing, so others' unstaged edits are left alone
    ran = subprocess.run(
        [pre_commit, "run", "--all-files", "workflow-schema"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert re.search(r"GitHub workflows \(schema\)\.+Passed", ran.stdout), ran.stdout


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_coverage_floor_only_rises() -> None:
    """fail_under may go up with the measured figure, never below .ci/coverage-floor;
    raise both together."""
    floor = float((ROOT / ".ci" / "coverage-floor").read_text().strip())
    coverage = _pyproject()["tool"]["coverage"]
    assert coverage["report"]["fail_under"] >= floor > 0
    run = coverage["run"]
    assert run["branch"] is True
    assert set(run["source"]) == {"gateway", "broker", "audit", "wire"}
    assert "subprocess" in run["patch"]


def test_run_test_measures_coverage_on_the_whole_suite() -> None:
    script = (ROOT / "run").read_text()
    full = re.search(r"if \[ \$# -eq 0 \]; then\n(.*?)\n    fi", script, re.S)
    assert full, "./run test has no whole-suite branch"
    assert 'COVERAGE_FILE="$ROOT/.coverage"' in full.group(1)
    assert re.search(r"exec python -m pytest -n 2 --dist loadgroup --cov\b", full.group(1))


def test_ruff_format_keeps_the_line_length_and_double_quotes() -> None:
    ruff = _pyproject()["tool"]["ruff"]
    assert ruff["line-length"] == 100
    assert ruff["format"]["quote-style"] == "double"
