"""The broker's event loop setting (HOSHU_EVENT_LOOP)."""

from __future__ import annotations

import pytest
import uvloop

from broker.runtime import BrokerStopped, event_loop_factory
from broker.settings import BrokerSettings


def test_auto_takes_uvloop_when_installed_and_asyncio_turns_it_off() -> None:
    name, factory = event_loop_factory(BrokerSettings().event_loop)
    assert name == "uvloop" and factory is not None
    loop = factory()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()
    assert event_loop_factory("asyncio") == ("asyncio", None)


def test_the_setting_comes_from_the_environment_and_refuses_other_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HOSHU_EVENT_LOOP", "asyncio")
    assert BrokerSettings.from_env().event_loop == "asyncio"
    monkeypatch.setenv("HOSHU_EVENT_LOOP", "trio")
    with pytest.raises(ValueError, match="event_loop"):
        BrokerSettings.from_env()


def test_uvloop_required_but_missing_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop raises ImportError
    with pytest.raises(BrokerStopped, match="uvloop is not installed"):
        event_loop_factory("uvloop")
    assert event_loop_factory("auto") == ("asyncio", None)
