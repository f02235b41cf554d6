"""Work report workflow: generate after a grant ends, sign off, alert when left unsigned.

:class:`ReportService` reads events from the :class:`~audit.index.AuditIndex`
and writes ``report.generated``, ``report.signed`` and ``report.unsigned``
through the injected emitter.  Call :meth:`ReportService.generate` once the
grant ended and its events are indexed (the index sink's lag is 0), and
:meth:`ReportService.check_unsigned` periodically (e.g. hourly).

Signing is refused (:class:`~audit.report.ReportError`) when the report the
approver read is not the report the log gives now (different SHA-256), when it
was already signed, and when no report was generated.  Who may sign (the
hospital's approvers) is checked by the caller (the API router).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from audit.emitter import Emitter
from audit.events import new_event, utc_now
from audit.index import AuditIndex, EventQuery
from audit.report import ReportError, build_report

_REPORT_TYPES = ("report.generated", "report.signed", "report.unsigned")


class ReportService:
    def __init__(
        self,
        index: AuditIndex,
        emitter: Emitter,
        *,
        clock: Callable[[], datetime] = utc_now,
        unsigned_after_days: int = 7,
    ) -> None:
        self.index = index
        self.emitter = emitter
        self.clock = clock
        self.unsigned_after = timedelta(days=unsigned_after_days)
        self._alerted: set[str] = set()  # until the index has the report.unsigned event
        self._generated: set[str] = set()  # until the index has the report.generated event

    def events_for_grant(self, grant_id: str) -> list[dict[str, Any]]:
        by_grant = list(self.index.iterate(EventQuery(grant_id=grant_id), max_rows=200_000))
        request_id = next(
            (
                e.get("RequestId")
                for e in by_grant
                if e.get("EventType") == "grant.created" and e.get("RequestId")
            ),
            None,
        )
        by_request = (
            list(self.index.iterate(EventQuery(request_id=str(request_id)), max_rows=200_000))
            if request_id
            else []
        )
        seen: dict[str, dict[str, Any]] = {}
        for e in by_request + by_grant:
            if e.get("EventType") not in _REPORT_TYPES:
                seen[str(e["EventUid"])] = e
        return list(seen.values())

    def build(self, grant_id: str) -> dict[str, Any]:
        return build_report(self.events_for_grant(grant_id), grant_id, generated_at=self.clock())

    def generate(self, grant_id: str) -> dict[str, Any]:
        """Build the report and record ``report.generated`` (with its hash and verdict)."""
        report = self.build(grant_id)
        plan = report["plan"]
        self.emitter.emit(
            new_event(
                "report.generated",
                clock=self.clock,
                GrantId=grant_id,
                RequestId=plan.get("request_id"),
                HospitalId=plan.get("hospital_id"),
                VendorId=plan.get("vendor_id"),
                DvcRole="broker",
                ObjectType="work_report",
                EventMessage=f"work report for grant {grant_id}: {report['verdict']}",
                details={"verdict": report["verdict"], "report_sha256": report["report_sha256"]},
            )
        )
        return report

    def _report_events(self, grant_id: str) -> list[dict[str, Any]]:
        return list(self.index.iterate(EventQuery(grant_id=grant_id, types=_REPORT_TYPES)))

    def status(self, grant_id: str) -> dict[str, Any]:
        evs = self._report_events(grant_id)
        gen = [e for e in evs if e["EventType"] == "report.generated"]
        signed = [e for e in evs if e["EventType"] == "report.signed"]
        return {
            "grant_id": grant_id,
            "generated": bool(gen),
            "signed": bool(signed),
            "signed_by": signed[-1].get("ActorUsername") if signed else None,
            "signed_at": signed[-1].get("TimeGenerated") if signed else None,
            "report_sha256": (signed or gen or [{}])[-1].get("Details", {}).get("report_sha256"),
        }

    def sign(
        self,
        grant_id: str,
        report_sha256: str,
        *,
        user_id: str,
        username: str,
        comment: str | None = None,
    ) -> dict[str, Any]:
        """Record the approver's sign-off of exactly the report with ``report_sha256``."""
        st = self.status(grant_id)
        if not st["generated"]:
            raise ReportError(f"no work report was generated for grant {grant_id}")
        if st["signed"]:
            raise ReportError(
                f"the report for grant {grant_id} is already signed by {st['signed_by']}"
            )
        current = self.build(grant_id)
        if current["report_sha256"] != report_sha256:
            raise ReportError(
                "the report changed since it was read (SHA-256 differs): "
                "read it again before signing"
            )
        plan = current["plan"]
        event = self.emitter.emit(
            new_event(
                "report.signed",
                clock=self.clock,
                GrantId=grant_id,
                RequestId=plan.get("request_id"),
                HospitalId=plan.get("hospital_id"),
                VendorId=plan.get("vendor_id"),
                ActorUserId=user_id,
                ActorUsername=username,
                ActorUserType="approver",
                DvcRole="broker",
                ObjectType="work_report",
                EventMessage=f"{username} signed off the work report for grant {grant_id}",
                details={"report_sha256": report_sha256, "comment": comment},
            )
        )
        return dict(event.record)

    def generate_due(self, *, settle_s: float = 60.0, lookback_days: int = 30) -> list[str]:
        """Generate the report of every grant that ended (expired or revoked) at least
        ``settle_s`` ago and has none yet; returns the grant ids reported."""
        now = self.clock()
        ended = self.index.iterate(
            EventQuery(
                types=("grant.expired", "grant.revoked"),
                start=now - timedelta(days=lookback_days),
                end=now - timedelta(seconds=settle_s),
            )
        )
        done: list[str] = []
        for e in ended:
            grant_id = str(e.get("GrantId") or "")
            if not grant_id or grant_id in done or grant_id in self._generated:
                continue
            if any(r["EventType"] == "report.generated" for r in self._report_events(grant_id)):
                self._generated.add(grant_id)
                continue
            try:
                self.generate(grant_id)
            except ReportError:
                continue  # no grant.created indexed (yet): try again next time
            self._generated.add(grant_id)
            done.append(grant_id)
        return done

    def check_unsigned(self) -> list[str]:
        """Raise ``report.unsigned`` (once per report) for reports unsigned too long."""
        now = self.clock()
        cutoff = now - self.unsigned_after
        generated = self.index.iterate(EventQuery(types=("report.generated",), end=cutoff))
        alerted: list[str] = []
        for g in generated:
            grant_id = str(g.get("GrantId"))
            kinds = {e["EventType"] for e in self._report_events(grant_id)}
            if "report.signed" in kinds or "report.unsigned" in kinds or grant_id in self._alerted:
                continue
            self._alerted.add(grant_id)
            made = datetime.fromisoformat(str(g["TimeGenerated"]).replace("Z", "+00:00"))
            self.emitter.emit(
                new_event(
                    "report.unsigned",
                    clock=self.clock,
                    GrantId=grant_id,
                    RequestId=g.get("RequestId"),
                    HospitalId=g.get("HospitalId"),
                    VendorId=g.get("VendorId"),
                    DvcRole="broker",
                    EventResult="Failure",
                    ObjectType="work_report",
                    EventMessage=f"the work report for grant {grant_id} is still unsigned",
                    details={"age_days": (now - made).days},
                )
            )
            alerted.append(grant_id)
        return alerted
