"""Pure rules of who may approve what, and when a grant runs.

No I/O: everything a rule needs is passed in, including ``now``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from broker.access.errors import InvalidInput, PermissionDenied, PolicyViolation
from broker.access.model import AccessRequest, Decision, Instrument, Policy, Role, User


def approvals_required(policy: Policy, instruments: Iterable[Instrument]) -> int:
    """Approvals a request needs: the critical count if any instrument is critical."""
    needed = max(1, min(2, policy.approvals_required))
    if any(i.criticality == "critical" for i in instruments):
        needed = max(needed, min(2, policy.critical_approvals_required))
    return needed


def grant_window(request: AccessRequest, approved_at: datetime) -> tuple[datetime, datetime]:
    """The grant's clock starts at approval or the scheduled start, whichever is later."""
    start = approved_at if request.start_at is None else max(approved_at, request.start_at)
    return start, start + timedelta(seconds=request.duration_s)


def _parse_hhmm(text: str) -> time:
    try:
        hh, mm = text.split(":")
        return time(int(hh), int(mm))
    except ValueError as exc:
        raise InvalidInput(f"time of day must be HH:MM, not {text!r}") from exc


def validate_hours(policy: Policy) -> None:
    if bool(policy.hours_start) != bool(policy.hours_end):
        raise InvalidInput("allowed hours need both a start and an end")
    if policy.hours_start:
        _parse_hhmm(policy.hours_start)
        _parse_hhmm(policy.hours_end)
    try:
        ZoneInfo(policy.timezone)
    except Exception as exc:  # ZoneInfoNotFoundError, ValueError
        raise InvalidInput(f"unknown time zone {policy.timezone!r}") from exc


def within_hours(policy: Policy, at: datetime) -> bool:
    """True when ``at`` falls inside the policy's allowed hours (local time)."""
    if not policy.hours_start:
        return True
    local = at.astimezone(ZoneInfo(policy.timezone)).time()
    start, end = _parse_hhmm(policy.hours_start), _parse_hhmm(policy.hours_end)
    if start <= end:
        return start <= local < end
    return local >= start or local < end  # window across midnight


def check_request_against_policy(
    policy: Policy,
    *,
    duration_s: int,
    file_transfer: bool,
    start: datetime,
    emergency: bool,
) -> None:
    """Raise :class:`PolicyViolation` when the hospital policy refuses the request."""
    if duration_s <= 0:
        raise InvalidInput("duration must be positive")
    if emergency:
        if not policy.emergency_allowed:
            raise PolicyViolation("this hospital does not allow emergency access")
        if duration_s > policy.emergency_max_duration_s:
            raise PolicyViolation(
                f"emergency access is limited to {policy.emergency_max_duration_s} s"
            )
    elif duration_s > policy.max_duration_s:
        raise PolicyViolation(f"duration over the hospital's maximum of {policy.max_duration_s} s")
    if file_transfer and not policy.file_transfer_allowed:
        raise PolicyViolation("this hospital does not allow file transfer")
    if not emergency and not within_hours(policy, start):
        raise PolicyViolation(
            f"start is outside the allowed hours {policy.hours_start}-{policy.hours_end} "
            f"({policy.timezone})"
        )


def check_can_decide(
    request: AccessRequest,
    approver: User,
    approver_hospital: str | None,
    decisions: Sequence[Decision],
) -> None:
    """Only approvers of the request's hospital decide; never the requester; once each."""
    if Role.APPROVER not in approver.roles:
        raise PermissionDenied("only approvers decide on requests")
    if approver.id == request.requester_id:
        raise PermissionDenied("a requester cannot approve or deny their own request")
    if approver_hospital != request.hospital_id:
        raise PermissionDenied("only approvers of the instrument's hospital may decide")
    if any(d.approver_id == approver.id for d in decisions):
        raise PermissionDenied("each approval must come from a different approver")


def distinct_approvals(decisions: Sequence[Decision]) -> int:
    return len({d.approver_id for d in decisions if d.verdict == "approve"})
