"""Pure gateway decisions: allowlist, windows, backoff, states; the configuration file."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.agent import (
    TRANSITIONS,
    AgentState,
    Backoff,
    IllegalAgentTransition,
    check_transition,
)
from gateway.cli import main
from gateway.config import Instrument, parse_config
from gateway.errors import ConfigError
from gateway.policy import Allowlist, active_window, channel_decision, tunnel_wanted
from tests.gateway.configs import GOOD
from wire import Mode

T0 = datetime(2026, 4, 1, 9, 0, tzinfo=UTC)
LAB = Allowlist(
    [
        Instrument("cobas-c503-1", "10.0.0.5", (22, 443), "ssh"),
        Instrument("lis-server", "10.0.0.9", (3389,), "rdp"),
    ]
)


@pytest.mark.parametrize(
    ("host", "port", "allowed", "reason"),
    [
        ("cobas-c503-1", 22, True, "allowed"),
        ("10.0.0.5", 443, True, "allowed"),
        ("COBAS-C503-1", 22, True, "allowed"),
        ("cobas-c503-1", 23, False, "port 23 is not listed"),
        ("10.0.0.6", 22, False, "not on the gateway's allowlist"),
        ("lis-server", 22, False, "port 22 is not listed"),
        ("", 22, False, "not on the gateway's allowlist"),
    ],
)
def test_allowlist_admits_only_listed_host_and_port(
    host: str, port: int, allowed: bool, reason: str
) -> None:
    d = LAB.check(host, port)
    assert d.allowed is allowed and reason in d.reason


def test_pause_and_closed_windows_refuse_even_listed_instruments() -> None:
    win = [(T0, T0 + timedelta(hours=1))]
    assert not channel_decision(
        LAB, "cobas-c503-1", 22, paused=True, mode=Mode.ALWAYS, windows=[], now=T0
    ).allowed
    assert channel_decision(
        LAB,
        "cobas-c503-1",
        22,
        paused=False,
        mode=Mode.WINDOW_ONLY,
        windows=win,
        now=T0 + timedelta(minutes=5),
    ).allowed
    late = channel_decision(
        LAB,
        "cobas-c503-1",
        22,
        paused=False,
        mode=Mode.WINDOW_ONLY,
        windows=win,
        now=T0 + timedelta(hours=1),
    )
    assert not late.allowed and "no approved window" in late.reason


def test_overlapping_windows_merge_and_the_tunnel_follows_them() -> None:
    h = timedelta(hours=1)
    wins = [(T0, T0 + h), (T0 + h, T0 + 2 * h), (T0 + 3 * h, T0 + 4 * h)]
    assert active_window(wins, T0 + h / 2) == (T0, T0 + 2 * h)
    assert active_window(wins, T0 + 2 * h) is None
    assert tunnel_wanted(Mode.WINDOW_ONLY, False, wins, T0 + 3 * h)
    assert not tunnel_wanted(Mode.WINDOW_ONLY, False, wins, T0 + 2.5 * h)
    assert tunnel_wanted(Mode.ALWAYS, False, [], T0)
    assert not tunnel_wanted(Mode.ALWAYS, True, [], T0)


def test_backoff_doubles_with_full_jitter_and_is_capped() -> None:
    """The delay is a random share (0 to all) of a bound that doubles up to the cap."""
    low = Backoff(0.5, 5.0, lambda: 0.0)
    assert [low.next() for _ in range(6)] == [0.0] * 6
    mid = Backoff(0.5, 5.0, lambda: 0.5)
    assert [mid.next() for _ in range(6)] == [0.25, 0.5, 1.0, 2.0, 2.5, 2.5]
    high = Backoff(0.5, 5.0, lambda: 1.0)
    assert [high.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    high.reset()
    assert high.next() == 0.5


def test_agent_states_follow_the_transition_table() -> None:
    path = [
        AgentState.STOPPED,
        AgentState.CONNECTING,
        AgentState.CONNECTED,
        AgentState.BACKING_OFF,
        AgentState.CONNECTING,
    ]
    for current, new in itertools.pairwise(path):
        check_transition(current, new)
    with pytest.raises(IllegalAgentTransition, match="connected -> connecting"):
        check_transition(AgentState.CONNECTED, AgentState.CONNECTING)  # back off (or pause) first
    for state in AgentState:
        check_transition(state, state)  # staying put is no move
        for new in set(AgentState) - TRANSITIONS[state] - {state}:
            with pytest.raises(IllegalAgentTransition):
                check_transition(state, new)


def test_a_valid_configuration_is_read() -> None:
    c = parse_config(GOOD)
    assert c.mode is Mode.WINDOW_ONLY
    assert c.instruments[0].ports == (22, 443)
    assert c.tunnel.backoff_max_s == 5.0
    assert c.tunnel.connect_timeout_s == 30.0  # room for a loaded broker's login


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[gateway\nname=", "not valid TOML"),
        (GOOD.replace('mode = "window-only"', 'mode = "sometimes"'), "mode must be"),
        (GOOD.replace("ports = [22, 22, 443]", "ports = [0]"), "ports must be"),
        (GOOD.replace("ports = [22, 22, 443]", 'ports = "22"'), "wrong type"),
        (GOOD.replace('protocol = "ssh"', 'protocol = "telnet"'), "protocol must be"),
        (GOOD + "\n[tunnel]\nbackoff_max_s = 60\n", "10 s reconnect"),
        (GOOD + "\n[tunnel]\nconnect_timeout_s = 600\n", "connect_timeout_s above 300 s"),
        (GOOD + "\n[tunnel]\nretries = 3\n", "unknown setting"),
        (GOOD.replace('name = "gw1"', 'name = "GW 1"'), "name is not"),
        (
            GOOD + '[[instrument]]\nname = "cobas-c503-1"\nhost = "h"\nports = [1]\n'
            'protocol = "tcp"\n',
            "must be unique",
        ),
    ],
)
def test_a_bad_configuration_is_refused_naming_the_problem(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(text)


def test_a_corrupted_config_file_gives_a_clear_cli_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "gateway.toml"
    path.write_bytes(b"\xff\xfe[gateway]\x00")
    assert main(["--config", str(path), "status"]) == 2
    err = capsys.readouterr().err
    assert "configuration error" in err and str(path) in err
    assert main(["--config", str(tmp_path / "missing.toml"), "run"]) == 2
