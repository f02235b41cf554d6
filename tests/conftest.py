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


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``--dist loadgroup`` under pytest 9: pytest-xdist marks a test of an
    ``xdist_group`` by appending ``@<group>`` to the legacy ``_nodeid`` field, which
    pytest 9's structured node ids no longer read, so every group was spread over the
    workers like any other test (pytest-xdist issue 1386).  The suffix goes on the
    structured id here (nothing to do where xdist already put it there)."""
    if not getattr(config.option, "loadgroup", False):
        return
    from _pytest.nodeid import NodeId

    for item in items:
        names = {
            str(m.args[0] if m.args else m.kwargs.get("name", "default"))
            for m in item.iter_markers("xdist_group")
        }
        suffix = "@" + "_".join(sorted(names))
        if names and not item.nodeid.endswith(suffix) and hasattr(item, "_id"):
            item._id = NodeId.parse(item.nodeid + suffix)
