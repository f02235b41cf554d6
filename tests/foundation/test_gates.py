"""The foundation's promises: skips fail under CI, the layering holds, the tree installs."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _pytest(tmp_path: Path, body: str, ci: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "conftest.py").write_text(
        (ROOT / "tests" / "conftest.py")
        .read_text()
        .replace("pytest_plugins = sorted(", "_unused = sorted(")
    )
    (tmp_path / "test_x.py").write_text(body)
    env = {**os.environ, "CI": ci}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:xdist",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        cwd=tmp_path,
    )


def test_a_skipped_test_fails_under_ci(tmp_path: Path) -> None:
    body = "import pytest\n\ndef test_skip():\n    pytest.skip('no server')\n"
    ci = _pytest(tmp_path, body, "true")
    assert ci.returncode == 1, ci.stdout
    assert "skips are failures here" in ci.stdout
    local = _pytest(tmp_path, body, "")
    assert local.returncode == 0 and "1 skipped" in local.stdout


def test_import_layering_contracts_hold() -> None:
    lint = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:]
    assert "broken" in result.stdout and " 0 broken" in result.stdout


def test_gateway_extra_has_no_web_framework_or_orm() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    hospital_install = " ".join(meta["dependencies"] + meta["optional-dependencies"]["gateway"])
    for heavy in ("fastapi", "sqlalchemy", "uvicorn", "alembic"):
        assert heavy not in hospital_install.lower()
    assert meta["scripts"]["hoshu"] and meta["scripts"]["hoshu-gateway"]


def test_ci_runs_exactly_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci == "./run test"
    assert "./run test" in (ROOT / "README.md").read_text()
