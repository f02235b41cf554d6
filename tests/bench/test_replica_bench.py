"""The replica benchmark runs in quick mode: three real ``hoshu serve`` on a throwaway
PostgreSQL, stock ssh with a certificate, and every figure it promises is measured."""

from __future__ import annotations

from typing import Any

import pytest

from bench import replicas
from tests.bench.quick import run_section

pytestmark = [
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.xdist_group("demo"),
    pytest.mark.timeout(900),
]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run_section(tmp_path_factory.mktemp("rb"), "replicas", 840)


def test_every_replica_figure_is_measured(results: dict[str, Any]) -> None:
    missing = [k for k in replicas.KEYS if not isinstance(results.get(k), int | float)]
    assert missing == [], results["notes"]
    assert results["replicas"]["broker"] == "hoshu serve"


def test_the_figures_are_plausible(results: dict[str, Any]) -> None:
    """Sessions open through one replica and through three; the routed session moves
    bytes; a new session works within seconds of a tunnel holder's SIGKILL, and the
    database counts it gone within the 15 s bound (plus polling)."""
    assert results["replica_session_opens_per_s_1"] > 0
    assert results["replica_session_opens_per_s_3"] > 0
    assert results["throughput_replica_routed_MBps"] > 0
    assert results["replica_routed_vs_local"] == pytest.approx(
        results["throughput_replica_routed_MBps"] / results["throughput_replica_local_MBps"],
        rel=0.01,
    )
    assert results["replica_failover_s"] < 30
    assert results["replica_dead_detected_s"] < 25
