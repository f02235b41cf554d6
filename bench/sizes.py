"""How much each measurement does: the full run and the quick (test-suite) run."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sizes:
    """How much each measurement does; ``quick`` keeps the test suite fast."""

    throughput_bytes: int
    throughput_runs: int
    session_opens: int
    echo_samples: int
    gateway_steps: tuple[int, ...]  # the bare asyncssh listener (or the only one)
    gateway_steps_real: tuple[int, ...]  # hoshu's tunnel endpoint and gateway agents
    scale_session_opens: int
    audit_appends: int
    audit_events: int
    audit_queries: int
    desktop_seconds: float  # each desktop measuring window
    desktop_session_steps: tuple[int, ...]  # desktop sessions at once through one broker
    desktop_full_frames: int  # whole screens asked for one by one, per encoding and path
    gateways_required: int = 10_000  # the last step of hoshu's tunnel endpoint (the target)


FULL = Sizes(
    throughput_bytes=1_000_000_000,
    throughput_runs=2,
    session_opens=20,
    echo_samples=500,
    gateway_steps=(1000, 5000, 10000),
    gateway_steps_real=(1000, 2500, 5000),
    scale_session_opens=500,
    audit_appends=100_000,
    audit_events=1_000_000,
    audit_queries=200,
    desktop_seconds=20.0,
    desktop_session_steps=(1, 5, 10, 20, 30, 40),
    desktop_full_frames=30,
)
QUICK = Sizes(
    throughput_bytes=4_000_000,
    throughput_runs=1,
    session_opens=3,
    echo_samples=30,
    gateway_steps=(20,),
    gateway_steps_real=(20,),
    scale_session_opens=20,
    audit_appends=2_000,
    audit_events=20_000,
    audit_queries=20,
    desktop_seconds=3.0,
    desktop_session_steps=(1, 2),
    desktop_full_frames=3,
    gateways_required=20,
)
