"""Work reports as HTML, in Japanese (``ja``) and English (``en``).

Every value from the log is HTML-escaped: command lines and file names come
from engineers and must not become markup in the approver's browser.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

LANGS = ("ja", "en")

TEXT: dict[str, dict[str, str]] = {
    "ja": {
        "title": "保守作業報告書",
        "plan": "承認された作業計画",
        "actual": "実施内容",
        "engineer": "作業者",
        "vendor": "ベンダー",
        "hospital": "病院",
        "grant": "許可ID",
        "request": "申請ID",
        "instruments": "対象機器",
        "ports": "ポート",
        "file_transfer": "ファイル転送",
        "window": "作業時間帯",
        "work_plan": "作業内容",
        "ticket": "チケット",
        "approved_by": "承認者",
        "sessions": "セッション",
        "commands": "実行コマンド",
        "files": "転送ファイル",
        "forwards": "ポート転送",
        "refused": "拒否された操作",
        "verdict": "判定",
        "inside_plan": "計画の範囲内",
        "outside_plan": "計画の範囲外",
        "reasons": "理由",
        "recording": "録画 SHA-256",
        "duration": "時間(秒)",
        "started": "開始",
        "ended": "終了",
        "end_reason": "終了理由",
        "time": "時刻",
        "name": "名前",
        "size": "サイズ",
        "direction": "方向",
        "allowed": "許可",
        "not_allowed": "不許可",
        "none": "なし",
        "hash": "報告書 SHA-256",
        "signoff": "承認者確認欄",
        "generated": "作成日時",
        "instrument": "機器",
        "port": "ポート",
        "command": "コマンド",
        "why": "理由",
        "emergency": "緊急アクセス",
        "instrument_not_in_plan": "計画にない機器での操作",
        "port_not_in_plan": "計画にないポートの使用",
        "outside_window": "許可時間外の操作",
        "file_not_in_plan": "計画にないファイル転送",
        "refused_attempt": "拒否された試行",
        "emergency_access": "緊急アクセス(事後承認が必要)",
    },
    "en": {
        "title": "Maintenance work report",
        "plan": "Approved work plan",
        "actual": "What happened",
        "engineer": "Engineer",
        "vendor": "Vendor",
        "hospital": "Hospital",
        "grant": "Grant",
        "request": "Request",
        "instruments": "Instruments",
        "ports": "Ports",
        "file_transfer": "File transfer",
        "window": "Window",
        "work_plan": "Work plan",
        "ticket": "Ticket",
        "approved_by": "Approved by",
        "sessions": "Sessions",
        "commands": "Commands run",
        "files": "Files moved",
        "forwards": "Port forwards",
        "refused": "Refused attempts",
        "verdict": "Verdict",
        "inside_plan": "Inside the plan",
        "outside_plan": "Outside the plan",
        "reasons": "Reasons",
        "recording": "Recording SHA-256",
        "duration": "Duration (s)",
        "started": "Started",
        "ended": "Ended",
        "end_reason": "End reason",
        "time": "Time",
        "name": "Name",
        "size": "Size",
        "direction": "Direction",
        "allowed": "allowed",
        "not_allowed": "not allowed",
        "none": "none",
        "hash": "Report SHA-256",
        "signoff": "Approver sign-off",
        "generated": "Generated",
        "instrument": "Instrument",
        "port": "Port",
        "command": "Command",
        "why": "Why",
        "emergency": "Emergency access",
        "instrument_not_in_plan": "Activity on an instrument not in the plan",
        "port_not_in_plan": "A port not in the plan was used",
        "outside_window": "Activity outside the approved window",
        "file_not_in_plan": "Files moved although the plan did not allow it",
        "refused_attempt": "Refused attempt",
        "emergency_access": "Emergency access (must be reviewed)",
    },
}


def _e(value: Any) -> str:
    if value is None or value == "":
        return "–"
    if isinstance(value, list | tuple):
        return escape(", ".join(str(v) for v in value)) or "–"
    return escape(str(value))


def _table(
    t: Mapping[str, str], cols: Sequence[tuple[str, str]], rows: Sequence[Mapping[str, Any]]
) -> str:
    if not rows:
        return f"<p>{escape(t['none'])}</p>"
    head = "".join(f"<th>{escape(t[label])}</th>" for label, _ in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{_e(r.get(key))}</td>" for _, key in cols) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(report: Mapping[str, Any], lang: str = "ja") -> str:
    if lang not in TEXT:
        raise ValueError(f"unsupported language {lang!r} ({', '.join(LANGS)})")
    t = TEXT[lang]
    plan, actual = report["plan"], report["actual"]
    verdict = t[report["verdict"]]
    plan_rows = [
        ("engineer", plan.get("engineer")),
        ("vendor", plan.get("vendor_id")),
        ("hospital", plan.get("hospital_id")),
        ("request", plan.get("request_id")),
        ("grant", plan.get("grant_id")),
        ("instruments", plan.get("instruments")),
        ("ports", plan.get("ports")),
        ("file_transfer", t["allowed"] if plan.get("file_transfer") else t["not_allowed"]),
        ("window", f"{plan.get('starts') or '–'} – {plan.get('ends') or '–'}"),
        ("work_plan", plan.get("work_plan")),
        ("ticket", plan.get("ticket")),
        ("approved_by", plan.get("approved_by")),
    ]
    reasons = "".join(
        f"<li>{escape(t.get(r['code'], r['code']))}: {_e(r['subject'])} "
        f"<small>({_e(r['time'])})</small></li>"
        for r in report["reasons"]
    )
    parts = [
        f'<!doctype html><html lang="{lang}"><head><meta charset="utf-8">',
        f"<title>{escape(t['title'])} {_e(plan.get('grant_id'))}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #999;padding:2px 6px;text-align:left}"
        ".outside_plan{color:#b00}.inside_plan{color:#060}</style></head><body>",
        f"<h1>{escape(t['title'])}</h1>",
        f'<p class="{escape(report["verdict"])}"><strong>{escape(t["verdict"])}: '
        f"{escape(verdict)}</strong></p>",
        f"<ul>{reasons}</ul>" if reasons else "",
        f"<h2>{escape(t['plan'])}</h2><table><tbody>",
        "".join(f"<tr><th>{escape(t[k])}</th><td>{_e(v)}</td></tr>" for k, v in plan_rows),
        "</tbody></table>",
        f"<h2>{escape(t['actual'])}</h2>",
        f"<h3>{escape(t['sessions'])}</h3>",
        _table(
            t,
            [
                ("instrument", "instrument"),
                ("port", "port"),
                ("started", "started"),
                ("ended", "ended"),
                ("duration", "duration_s"),
                ("end_reason", "end_reason"),
                ("recording", "recording_sha256"),
            ],
            actual["sessions"],
        ),
        f"<h3>{escape(t['commands'])}</h3>",
        _table(
            t,
            [("time", "time"), ("instrument", "instrument"), ("command", "command")],
            actual["commands"],
        ),
        f"<h3>{escape(t['files'])}</h3>",
        _table(
            t,
            [
                ("time", "time"),
                ("instrument", "instrument"),
                ("name", "name"),
                ("size", "size"),
                ("direction", "direction"),
                ("hash", "sha256"),
            ],
            actual["files"],
        ),
        f"<h3>{escape(t['forwards'])}</h3>",
        _table(
            t,
            [("time", "time"), ("instrument", "instrument"), ("port", "port")],
            actual["forwards"],
        ),
        f"<h3>{escape(t['refused'])}</h3>",
        _table(
            t,
            [("time", "time"), ("instrument", "instrument"), ("port", "port"), ("why", "why")],
            actual["refused"],
        ),
        f"<p>{escape(t['generated'])}: {_e(report.get('generated_at'))}<br>"
        f"{escape(t['hash'])}: <code>{_e(report.get('report_sha256'))}</code></p>",
        f"<h2>{escape(t['signoff'])}</h2><p>__________________</p>",
        "</body></html>",
    ]
    return "\n".join(parts)
