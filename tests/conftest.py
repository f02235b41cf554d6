"""Suite-wide settings: shared fixtures and the no-skip rule under CI."""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path

import pytest

# Shared fixtures live in tests/fixtures/<name>.py; each file is a plugin.
pytest_plugins = sorted(
    f"tests.fixtures.{p.stem}"
    for p in (Path(__file__).parent / "fixtures").glob("*.py")
    if p.stem != "__init__"
)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    """Under CI=true a skipped test is a failure: nothing may silently not run."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI", "").lower() == "true" and report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"test skipped under CI (skips are failures here): {reason}"
