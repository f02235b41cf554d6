"""Periodic log review (control 27): one report per month, per hospital or platform-wide.

Sections, each built from indexed audit events:

* failed logins — ``ssh.login``/``user.login`` with result Failure, MFA
  failures and lockouts, per user and source address;
* off-window attempts — refused sessions, forwards, files and gateway channels
  (no grant, outside the window, not on the allowlist), with the reason;
* new source addresses — successful logins from an address that user had not
  used in the preceding ``lookback_days``;
* emergency sessions — ``emergency.started`` and whether each was reviewed;
* unsigned reports — work reports generated but not signed off;
* the gateways' own events — refused tunnels, kill-switch use.

``review.generated`` records that the review was produced and its SHA-256.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from html import escape
from typing import Any

from audit.emitter import Emitter
from audit.events import new_event, utc_now
from audit.index import AuditIndex, EventQuery, QueryError

_FAILED = ("ssh.login", "user.login", "user.mfa_failed", "user.locked_out")
_REFUSED = ("session.refused", "forward.refused", "file.refused", "gateway.channel_refused")
_LOGINS = ("ssh.login", "user.login")


def month_range(month: str) -> tuple[datetime, datetime]:
    """``"2026-04"`` -> [2026-04-01, 2026-05-01) in UTC."""
    try:
        start = datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC)
    except ValueError as exc:
        raise QueryError(f"month must look like 2026-04, not {month!r}") from exc
    end = (start + timedelta(days=32)).replace(day=1)
    return start, end


def _brief(e: dict[str, Any]) -> dict[str, Any]:
    return {
        "time": e.get("TimeGenerated"),
        "type": e.get("EventType"),
        "user": e.get("ActorUsername"),
        "source": e.get("SrcIpAddr"),
        "instrument": e.get("TargetHostname"),
        "why": e.get("EventResultDetails"),
        "hospital_id": e.get("HospitalId"),
        "event_uid": e.get("EventUid"),
    }


def build_review(
    index: AuditIndex,
    month: str,
    *,
    hospital_id: str | None = None,
    lookback_days: int = 90,
    now: datetime | None = None,
) -> dict[str, Any]:
    start, end = month_range(month)

    def q(types: tuple[str, ...], s: datetime = start, e: datetime = end) -> list[dict[str, Any]]:
        return list(index.iterate(EventQuery(start=s, end=e, types=types, hospital_id=hospital_id)))

    failed = [
        e
        for e in q(_FAILED)
        if e["EventType"] in ("user.mfa_failed", "user.locked_out")
        or e.get("EventResult") == "Failure"
    ]
    refused = q(_REFUSED)
    logins = [e for e in q(_LOGINS) if e.get("EventResult") == "Success"]
    earlier = [
        e
        for e in q(_LOGINS, start - timedelta(days=lookback_days), start)
        if e.get("EventResult") == "Success"
    ]
    known = {(e.get("ActorUsername"), e.get("SrcIpAddr")) for e in earlier}
    new_sources: dict[tuple[Any, Any], dict[str, Any]] = {}
    for e in logins:
        key = (e.get("ActorUsername"), e.get("SrcIpAddr"))
        if e.get("SrcIpAddr") and key not in known and key not in new_sources:
            new_sources[key] = _brief(e)
    emergencies = q(("emergency.started",))
    reviewed = {
        e.get("GrantId") or e.get("RequestId")
        for e in q(("emergency.reviewed",), start, (now or utc_now()) + timedelta(1))
    }
    gen = q(("report.generated",))
    signed = {
        e.get("GrantId") for e in q(("report.signed",), start, (now or utc_now()) + timedelta(1))
    }
    gateway = q(("gateway.refused", "gateway.paused", "gateway.resumed"))
    review: dict[str, Any] = {
        "kind": "hoshu.periodic_review",
        "version": 1,
        "month": month,
        "hospital_id": hospital_id,
        "failed_logins": {
            "count": len(failed),
            "by_user": dict(Counter(str(e.get("ActorUsername")) for e in failed)),
            "events": [_brief(e) for e in failed],
        },
        "off_window_attempts": {
            "count": len(refused),
            "by_reason": dict(Counter(str(e.get("EventResultDetails")) for e in refused)),
            "events": [_brief(e) for e in refused],
        },
        "new_source_addresses": list(new_sources.values()),
        "emergency_sessions": [
            {**_brief(e), "reviewed": (e.get("GrantId") or e.get("RequestId")) in reviewed}
            for e in emergencies
        ],
        "unsigned_reports": [
            {
                "grant_id": e.get("GrantId"),
                "generated": e.get("TimeGenerated"),
                "verdict": (e.get("Details") or {}).get("verdict"),
            }
            for e in gen
            if e.get("GrantId") not in signed
        ],
        "gateway_events": [_brief(e) for e in gateway],
    }
    review["findings"] = (
        review["failed_logins"]["count"]
        + review["off_window_attempts"]["count"]
        + len(review["new_source_addresses"])
        + len(review["emergency_sessions"])
        + len(review["unsigned_reports"])
    )
    review["report_sha256"] = hashlib.sha256(
        json.dumps(review, sort_keys=True, ensure_ascii=False).encode()
    ).hexdigest()
    return review


def record_review(
    review: dict[str, Any], emitter: Emitter, clock: Callable[[], datetime] = utc_now
) -> None:
    emitter.emit(
        new_event(
            "review.generated",
            clock=clock,
            HospitalId=review.get("hospital_id"),
            DvcRole="broker",
            ObjectType="periodic_review",
            EventMessage=f"periodic review for {review['month']}: {review['findings']} findings",
            details={
                "period": review["month"],
                "findings": review["findings"],
                "report_sha256": review["report_sha256"],
            },
        )
    )


_LABELS = {
    "ja": {
        "title": "定期ログレビュー",
        "failed_logins": "ログイン失敗",
        "off_window_attempts": "許可外・時間外の試行",
        "new_source_addresses": "新しい接続元",
        "emergency_sessions": "緊急アクセス",
        "unsigned_reports": "未承認の作業報告書",
        "gateway_events": "ゲートウェイのイベント",
        "count": "件数",
        "none": "なし",
    },
    "en": {
        "title": "Periodic log review",
        "failed_logins": "Failed logins",
        "off_window_attempts": "Off-window or refused attempts",
        "new_source_addresses": "New source addresses",
        "emergency_sessions": "Emergency sessions",
        "unsigned_reports": "Unsigned work reports",
        "gateway_events": "Gateway events",
        "count": "Count",
        "none": "none",
    },
}


def render_review_html(review: dict[str, Any], lang: str = "ja") -> str:
    if lang not in _LABELS:
        raise ValueError(f"unsupported language {lang!r}")
    t = _LABELS[lang]
    out = [
        f'<!doctype html><html lang="{lang}"><head><meta charset="utf-8">'
        f"<title>{escape(t['title'])} {escape(review['month'])}</title></head><body>",
        f"<h1>{escape(t['title'])} {escape(review['month'])}</h1>",
    ]
    for key in (
        "failed_logins",
        "off_window_attempts",
        "new_source_addresses",
        "emergency_sessions",
        "unsigned_reports",
        "gateway_events",
    ):
        section = review[key]
        rows = section["events"] if isinstance(section, dict) else section
        out.append(f"<h2>{escape(t[key])} ({escape(t['count'])}: {len(rows)})</h2>")
        if not rows:
            out.append(f"<p>{escape(t['none'])}</p>")
            continue
        cols = list(rows[0])
        out.append("<table><tr>" + "".join(f"<th>{escape(c)}</th>" for c in cols) + "</tr>")
        out += [
            "<tr>" + "".join(f"<td>{escape(str(r.get(c, '')))}</td>" for c in cols) + "</tr>"
            for r in rows
        ]
        out.append("</table>")
    out.append(f"<p>SHA-256: <code>{escape(review['report_sha256'])}</code></p></body></html>")
    return "\n".join(out)
