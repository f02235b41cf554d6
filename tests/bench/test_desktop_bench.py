"""The desktop benchmark (``hoshu serve`` with the demo's Xvnc desktop and its xrdp
desktop, a moving window on each; a direct RFB client, and the broker's RDP client
straight to xrdp, beside it) runs at its quick size and writes every figure it
promises as a plausible number; no figure is held to a speed target here."""

from __future__ import annotations

from typing import Any

import pytest

from bench import desktop_bench
from bench.sizes import QUICK
from tests.bench.quick import run_section


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run_section(tmp_path_factory.mktemp("desk"), "desktop", 600)


@pytest.mark.slow
@pytest.mark.xdist_group("demo")
@pytest.mark.timeout(660)
def test_the_desktop_figures_are_measured_and_plausible(results: dict[str, Any]) -> None:
    """Frames arrive under the moving window directly and through hoshu, the recording
    grows, the broker and gateway spend CPU on the session, whole screens arrive in Raw
    and ZRLE both ways, and at least the first step of concurrent sessions is carried."""
    for key in desktop_bench.KEYS:
        value = results[key]
        assert isinstance(value, int | float) and value > 0, (key, results["notes"])
    # a frame is at most a whole 1024x768 screen: more bytes a second than 30 screens
    # would be a miscount
    for path in ("direct", "hoshu"):
        assert results[f"desktop_stream_kB_per_s_{path}"] < 30 * 1024 * 768 * 4 / 1e3
    # the recording holds at least the first whole screen the session got
    assert results["desktop_recording_bytes_per_min"] > 10_000
    info = results["desktop"]
    assert info["fps_floor"] == desktop_bench.FPS_FLOOR
    levels = info["levels"]
    carried = results["desktop_sessions_per_broker_process"]
    assert carried in QUICK.desktop_session_steps
    assert levels[str(carried)]["held"] is True
    assert levels[str(carried)]["fps_min"] >= desktop_bench.FPS_FLOOR
    assert str(QUICK.desktop_session_steps[0]) in levels
    assert "frames/s" in info["sessions_criterion"]
    assert not [n for n in results["notes"] if "desktop" in n]


@pytest.mark.slow
@pytest.mark.xdist_group("demo")
@pytest.mark.timeout(660)
def test_the_rdp_desktop_figures_are_measured_and_plausible(results: dict[str, Any]) -> None:
    """The RDP desktop (xrdp in front of its own Xvnc, the same moving window): the
    broker's RDP client straight to xrdp decodes bitmap updates, the console's RDP
    bridge gives the RFB client updates, the recording grows, the broker spends CPU on
    the session, a whole screen arrives in Raw, and the first step of the ramp holds."""
    for key in desktop_bench.RDP_KEYS:
        value = results[key]
        assert isinstance(value, int | float) and value > 0, (key, results["notes"])
    info = results["desktop_rdp"]
    assert info["direct"]["rectangles_per_s"] > 0
    # Raw through the bridge: at most 30 whole 1024x768 screens a second
    assert 0 < info["hoshu"]["stream_kB_per_s"] < 30 * 1024 * 768 * 4 / 1e3
    carried = results["desktop_rdp_sessions_at_10fps"]
    assert carried in QUICK.desktop_session_steps
    assert info["levels"][str(carried)]["held"] is True
    assert info["levels"][str(carried)]["fps_min"] >= desktop_bench.FPS_FLOOR
    for part in ("broker", "gateway", "xrdp", "xvnc", "client"):
        assert info["levels"][str(carried)][f"{part}_cpu_share_of_a_core"] >= 0, part
    assert results["sections"]["desktop rdp"]["notes"] == []
