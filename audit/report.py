"""Work reports (control 20): the approved plan against what the audit log shows.

A report is built from audit events only — ``request.created`` and
``grant.created`` carry the plan (instruments, ports, file transfer, window,
work plan text); session, command, forward and file events carry what
happened; ``*.refused`` events carry what was attempted and stopped.  Nothing
the engineer says about the work enters the report.  Producers must put the
``GrantId`` (and ``RequestId`` where known) on every session, forward and file
event; the report selects on them.

The verdict is *inside the plan* only when nothing below happened; otherwise
*outside the plan* with every reason:

* activity on an instrument the grant does not name, or on a port it does not name;
* activity outside the grant window;
* files moved although the plan did not allow file transfer;
* refused attempts (sessions, forwards, files, gateway channels);
* emergency access (must be reviewed afterwards).

The report's canonical JSON is hashed (``report_sha256``); sign-off records
that hash in ``report.signed`` so a later change to the report is evident.
Rendering (HTML, Japanese and English) lives in :mod:`audit.report_render`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from audit.errors import AuditError

_REFUSED = ("session.refused", "forward.refused", "file.refused", "gateway.channel_refused")
_ACTIVITY = (
    "session.started",
    "session.ended",
    "session.terminated",
    "session.command",
    "forward.opened",
    "forward.closed",
    "file.transferred",
)


class ReportError(AuditError):
    """A report cannot be built (no plan in the log) or signed."""


@dataclass(frozen=True)
class Reason:
    code: str  # instrument_not_in_plan, port_not_in_plan, outside_window, ...
    event_uid: str
    time: str
    subject: str  # the instrument, port, file or window concerned

    def as_dict(self) -> dict[str, str]:
        return {
            "code": self.code,
            "event_uid": self.event_uid,
            "time": self.time,
            "subject": self.subject,
        }


def _parse(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def _list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _plan(events: Sequence[Mapping[str, Any]], grant_id: str) -> dict[str, Any]:
    request = next((e for e in events if e.get("EventType") == "request.created"), None)
    grant = next(
        (
            e
            for e in events
            if e.get("EventType") == "grant.created" and e.get("GrantId") == grant_id
        ),
        None,
    )
    if grant is None:
        raise ReportError(f"no grant.created event for grant {grant_id}: nothing to compare")
    gd: Mapping[str, Any] = grant.get("Details") or {}
    rd: Mapping[str, Any] = (request or {}).get("Details") or {}
    approvals = [e for e in events if e.get("EventType") == "request.approved"]
    return {
        "grant_id": grant_id,
        "request_id": grant.get("RequestId") or (request or {}).get("RequestId"),
        "hospital_id": grant.get("HospitalId"),
        "engineer": (request or {}).get("ActorUsername") or grant.get("TargetUsername"),
        "engineer_id": (request or {}).get("ActorUserId"),
        "vendor_id": grant.get("VendorId") or (request or {}).get("VendorId"),
        "instruments": [str(x) for x in _list(gd.get("instruments") or rd.get("instruments"))],
        "ports": sorted(
            {int(p) for p in _list(gd.get("ports") or rd.get("ports")) if str(p).isdigit()}
        ),
        "file_transfer": bool(gd.get("file_transfer", rd.get("file_transfer", False))),
        "starts": gd.get("starts"),
        "ends": gd.get("ends"),
        "work_plan": gd.get("work_plan") or rd.get("work_plan") or "",
        "ticket": gd.get("ticket") or rd.get("ticket"),
        "reason": rd.get("reason"),
        "approved_by": [str(e.get("ActorUsername") or e.get("ActorUserId")) for e in approvals],
    }


def build_report(
    events: Iterable[Mapping[str, Any]], grant_id: str, *, generated_at: datetime
) -> dict[str, Any]:
    """The work report for one grant, from its request's and grant's audit events."""
    evs = sorted(
        (dict(e) for e in events),
        key=lambda e: (str(e.get("TimeGenerated")), int(e.get("ChainSeq") or 0)),
    )
    plan = _plan(evs, grant_id)
    starts, ends = _parse(plan["starts"]), _parse(plan["ends"])
    reasons: list[Reason] = []
    sessions: dict[str, dict[str, Any]] = {}
    commands: list[dict[str, Any]] = []
    files: list[dict[str, Any]] = []
    forwards: list[dict[str, Any]] = []
    refused: list[dict[str, Any]] = []
    emergency = False

    def flag(code: str, e: Mapping[str, Any], subject: str) -> None:
        reasons.append(Reason(code, str(e.get("EventUid")), str(e.get("TimeGenerated")), subject))

    for e in evs:
        typ, uid = str(e.get("EventType")), str(e.get("EventUid"))
        d: Mapping[str, Any] = e.get("Details") or {}
        host, port = e.get("TargetHostname"), e.get("TargetPortNumber")
        when = _parse(e.get("TimeGenerated"))
        if typ == "emergency.started":
            emergency = True
            flag("emergency_access", e, str(d.get("reason") or ""))
        if typ in _REFUSED:
            refused.append(
                {
                    "type": typ,
                    "time": e.get("TimeGenerated"),
                    "instrument": host,
                    "port": port,
                    "why": e.get("EventResultDetails"),
                    "event_uid": uid,
                }
            )
            flag("refused_attempt", e, f"{typ} {host or ''}:{port or ''}".strip())
            continue
        if typ not in _ACTIVITY:
            continue
        if host and plan["instruments"] and host not in plan["instruments"]:
            flag("instrument_not_in_plan", e, str(host))
        if (
            port is not None
            and plan["ports"]
            and int(port) not in plan["ports"]
            and typ.startswith(("session.started", "forward.opened"))
        ):
            flag("port_not_in_plan", e, f"{host}:{port}")
        if (
            when
            and ((starts and when < starts) or (ends and when > ends))
            and typ in ("session.started", "forward.opened", "file.transferred", "session.command")
        ):
            flag("outside_window", e, f"{plan['starts']} – {plan['ends']}")
        sid = str(e.get("TargetSessionId") or "")
        if typ == "session.started":
            sessions[sid] = {
                "session_id": sid,
                "instrument": host,
                "port": port,
                "kind": d.get("kind"),
                "started": e.get("TimeGenerated"),
                "ended": None,
                "duration_s": None,
                "end_reason": None,
                "recording_sha256": None,
                "recording_size": None,
            }
        elif typ in ("session.ended", "session.terminated"):
            s = sessions.setdefault(
                sid,
                {
                    "session_id": sid,
                    "instrument": host,
                    "port": port,
                    "kind": d.get("kind"),
                    "started": None,
                },
            )
            dur = e.get("NetworkDuration")
            s.update(
                {
                    "ended": e.get("TimeGenerated"),
                    "duration_s": round(int(dur) / 1000, 1) if dur is not None else None,
                    "end_reason": e.get("EventResultDetails") or typ.split(".")[1],
                    "recording_sha256": e.get("RecordingSHA256") or s.get("recording_sha256"),
                    "recording_size": e.get("RecordingSize") or s.get("recording_size"),
                }
            )
        elif typ == "session.command":
            commands.append(
                {
                    "time": e.get("TimeGenerated"),
                    "session_id": sid,
                    "instrument": host,
                    "command": d.get("command"),
                }
            )
        elif typ == "file.transferred":
            files.append(
                {
                    "time": e.get("TimeGenerated"),
                    "instrument": host,
                    "name": e.get("TargetFileName"),
                    "size": e.get("TargetFileSize"),
                    "sha256": e.get("TargetFileSHA256"),
                    "direction": e.get("NetworkDirection"),
                    "tool": d.get("tool"),
                }
            )
            if not plan["file_transfer"]:
                flag("file_not_in_plan", e, str(e.get("TargetFileName")))
        elif typ == "forward.opened":
            forwards.append({"time": e.get("TimeGenerated"), "instrument": host, "port": port})
        elif typ == "forward.closed":
            forwards.append(
                {
                    "time": e.get("TimeGenerated"),
                    "instrument": host,
                    "port": port,
                    "closed": True,
                    "bytes_out": e.get("SrcBytes"),
                    "bytes_in": e.get("DstBytes"),
                }
            )
    report: dict[str, Any] = {
        "kind": "hoshu.work_report",
        "version": 1,
        "generated_at": generated_at.isoformat(),
        "plan": plan,
        "actual": {
            "sessions": list(sessions.values()),
            "commands": commands,
            "files": files,
            "forwards": forwards,
            "refused": refused,
            "emergency": emergency,
        },
        "verdict": "outside_plan" if reasons else "inside_plan",
        "reasons": [r.as_dict() for r in reasons],
        "source_events": [str(e.get("EventUid")) for e in evs],
    }
    report["report_sha256"] = report_hash(report)
    return report


def report_hash(report: Mapping[str, Any]) -> str:
    """SHA-256 of the report's canonical JSON, without the hash and the generation time.

    Rebuilding the report from the same events gives the same hash, so a signed
    hash can be checked against the log at any later time.
    """
    body = {k: v for k, v in report.items() if k not in ("report_sha256", "generated_at")}
    return hashlib.sha256(
        json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()
    ).hexdigest()
