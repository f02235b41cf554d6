"""One planned maintenance as audit events, for the report and auditor API tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from audit import new_event
from audit.events import AuditEvent
from tests.support import FakeClock

T0 = datetime(2026, 4, 14, 9, 0, tzinfo=UTC)


def at(minutes: float) -> FakeClock:
    """A clock standing ``minutes`` after T0 (before it, if negative)."""
    return FakeClock(T0 + timedelta(minutes=minutes))


def plan_events(grant: str = "g1", request: str = "r1") -> list[AuditEvent]:
    """The events of one planned maintenance at Okayama: request, approval, grant, a
    session inside it, as the work reports and the auditor API read them."""
    common: dict[str, Any] = {"HospitalId": "h-okayama", "VendorId": "v-1", "RequestId": request}
    return [
        new_event(
            "request.created",
            clock=at(-60),
            ActorUsername="sato",
            ActorUserId="u-sato",
            details={
                "instruments": ["cobas-c503-1"],
                "ports": [22],
                "file_transfer": False,
                "work_plan": "試薬プローブ交換",
                "ticket": "INC-1",
            },
            **common,
        ),
        new_event("request.approved", clock=at(-30), ActorUsername="yamada", **common),
        new_event(
            "grant.created",
            clock=at(-30),
            GrantId=grant,
            details={
                "instruments": ["cobas-c503-1"],
                "ports": [22],
                "file_transfer": False,
                "starts": T0.isoformat(),
                "ends": (T0 + timedelta(hours=2)).isoformat(),
            },
            **common,
        ),
        new_event(
            "session.started",
            clock=at(5),
            GrantId=grant,
            ActorUsername="sato",
            TargetHostname="cobas-c503-1",
            TargetPortNumber=22,
            TargetSessionId="s1",
            details={"kind": "shell"},
            **common,
        ),
        new_event(
            "session.command",
            clock=at(6),
            GrantId=grant,
            TargetSessionId="s1",
            TargetHostname="cobas-c503-1",
            details={"command": "<script>x</script>"},
            **common,
        ),
        new_event(
            "session.ended",
            clock=at(40),
            GrantId=grant,
            TargetSessionId="s1",
            TargetHostname="cobas-c503-1",
            NetworkDuration=35 * 60 * 1000,
            RecordingSHA256="ab" * 32,
            RecordingSize=4096,
            **common,
        ),
    ]
