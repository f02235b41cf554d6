"""Each control's status for one deployment, computed -- not a hand-written table.

:data:`audit.controls.CONTROLS` says what each feature delivers at best and
which tests prove it.  :func:`assess` turns that into **met**, **partly** or
**not met**, with the reasons, for a :class:`Deployment`: the facts of a
running configuration (SIEM sinks and their masking, gateways' tunnel modes,
retention, where the log and the recordings are stored) and, when given, the
results of a test run (a JUnit XML report from ``pytest --junit-xml``):

* a control whose feature is partial is at most *partly* met; a gap is *not met*;
* a control whose outcome depends on the configuration is judged on it
  (13 gateways' modes, 18 masking, 25 shipping and WORM, 28 retention,
  29 shipping);
* with a test run: a cited test that failed makes the control *not met*, one
  that did not run (or was skipped) makes it at most *partly* met.

``hoshu audit compliance`` gathers the facts on the broker host and prints the
result (text, Markdown or JSON, ja or en).  ``docs/compliance.md`` is the same
rendering for the default configuration (``python -m audit.compliance >
docs/compliance.md``); a test keeps the two equal.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from audit.controls import CONTROLS, Control

__all__ = [
    "CONTROLS",
    "Assessment",
    "Control",
    "Deployment",
    "assess",
    "read_junit",
    "render_json",
    "render_markdown",
    "render_text",
]

MET, PARTLY, NOT_MET = "met", "partly", "not met"
_RANK = {MET: 0, PARTLY: 1, NOT_MET: 2}
LABELS = {
    "en": {
        MET: "met",
        PARTLY: "partly",
        NOT_MET: "not met",
        "title": "Compliance status",
        "for": "for",
        "tests": "tests",
        "why": "why",
    },
    "ja": {
        MET: "充足",
        PARTLY: "一部充足",
        NOT_MET: "未充足",
        "title": "対策状況",
        "for": "対象",
        "tests": "テスト",
        "why": "理由",
    },
}


@dataclass(frozen=True)
class Deployment:
    """The facts a control's status depends on (gathered by the caller)."""

    label: str = "the default configuration"
    sinks: tuple[tuple[str, bool], ...] = ()  # (sink name, masks patient identifiers)
    gateway_modes: Mapping[str, str] | None = None  # gateway -> mode; None: not known
    events_retention_days: int | None = None
    recordings_retention_days: int | None = None
    storage: str = "local files"  # where the log and the recordings are kept
    test_results: Mapping[str, str] | None = None  # test id -> passed|failed|skipped


@dataclass(frozen=True)
class Assessment:
    control: Control
    status: str
    reasons: tuple[str, ...] = field(default=())


def _c13(d: Deployment) -> tuple[str, str] | None:
    if d.gateway_modes is None:
        return PARTLY, (
            "gateways' tunnel modes are not known here; a gateway's default "
            "mode is `always`, which keeps a tunnel up outside grant windows"
        )
    always = sorted(g for g, m in d.gateway_modes.items() if m != "window-only")
    if not d.gateway_modes:
        return PARTLY, "no gateway has connected yet; the default mode is `always`"
    if always:
        return PARTLY, (
            f"gateways {', '.join(always)} keep a tunnel outside grant windows "
            '(mode `always`; set `mode = "window-only"` in gateway.toml)'
        )
    return None


def _c18(d: Deployment) -> tuple[str, str] | None:
    plain = [name for name, masked in d.sinks if not masked]
    if plain:
        return NOT_MET, f"sinks {', '.join(plain)} receive events without masking"
    return None


def _c25(d: Deployment) -> tuple[str, str] | None:
    if not d.sinks:
        return NOT_MET, (
            "no SIEM sink is configured: the checkpoints never leave the "
            "broker, so whoever controls its disk and key can rewrite the log; "
            f"no WORM storage: the log and the recordings are {d.storage}"
        )
    return PARTLY, (
        f"no WORM storage: the log and the recordings are {d.storage}; "
        f"alteration is detected (checkpoints shipped to "
        f"{', '.join(n for n, _ in d.sinks)}), not prevented"
    )


def _c28(d: Deployment) -> tuple[str, str] | None:
    unset = [
        k
        for k, v in (
            ("events", d.events_retention_days),
            ("recordings", d.recordings_retention_days),
        )
        if v is None
    ]
    if unset:
        return PARTLY, (
            f"no retention period for {' and '.join(unset)}: kept forever "
            "(HOSHU_AUDIT_EVENTS_RETENTION_DAYS, HOSHU_RECORDINGS_RETENTION_DAYS)"
        )
    return None


def _c29(d: Deployment) -> tuple[str, str] | None:
    if not d.sinks:
        return NOT_MET, (
            "no SIEM sink is configured: events live only on the broker's "
            "disk until someone exports them"
        )
    return None


_BY_CONFIG: dict[int, Callable[[Deployment], tuple[str, str] | None]] = {
    13: _c13,
    18: _c18,
    25: _c25,
    28: _c28,
    29: _c29,
}


def _worse(a: str, b: str) -> str:
    return a if _RANK[a] >= _RANK[b] else b


def assess(deployment: Deployment | None = None) -> list[Assessment]:
    """Every control's status for ``deployment`` (default: the default configuration)."""
    d = deployment or Deployment()
    out: list[Assessment] = []
    for c in CONTROLS:
        status = {"done": MET, "partial": PARTLY}.get(c.design, NOT_MET)
        reasons = (
            []
            if status == MET
            else ["the feature covers part of the control (see what hoshu does)"]
        )
        judge = _BY_CONFIG.get(c.number)
        judged = judge(d) if judge is not None else None
        if judged is not None:
            status = _worse(status, judged[0])
            reasons.append(judged[1])
        if d.test_results is not None:
            failed = [t for t in c.tests if d.test_results.get(t) == "failed"]
            absent = [t for t in c.tests if d.test_results.get(t) not in ("passed", "failed")]
            if failed:
                status = NOT_MET
                reasons.append(f"cited tests failed: {', '.join(failed)}")
            if absent:
                status = _worse(status, PARTLY)
                reasons.append(f"cited tests did not run: {', '.join(absent)}")
        out.append(Assessment(c, status, tuple(reasons)))
    return out


def read_junit(path: str | Path) -> dict[str, str]:
    """Test id (``tests/x/test_y.py::name``) -> passed, failed or skipped, from JUnit XML."""
    results: dict[str, str] = {}
    # the operator's own pytest report; expat >= 2.4.1 (Python 3.11) limits entity expansion
    for case in ET.parse(path).getroot().iter("testcase"):  # noqa: S314
        module = (case.get("classname") or "").replace(".", "/")
        name = (case.get("name") or "").split("[", 1)[0]
        test = f"{module}.py::{name}"
        outcome = "passed"
        if case.find("failure") is not None or case.find("error") is not None:
            outcome = "failed"
        elif case.find("skipped") is not None:
            outcome = "skipped"
        worst = ("passed", "skipped", "failed")  # one failing parameter fails the test
        results[test] = max(outcome, results.get(test, "passed"), key=worst.index)
    return results


_HEADER = """# Compliance map

Every control of the "3 ministries, 2 guidelines" list that hoshu addresses
(see the shared `GUIDELINES.md`), the feature that meets it, the tests that
prove it, and its status **in the default configuration**. This page is
generated from `audit/controls.py` and `audit/compliance.py`
(`python -m audit.compliance > docs/compliance.md`). A deployment prints its
own status with `hoshu audit compliance` on the broker host: it reads the
broker settings (SIEM sinks and their masking, retention), the gateways' tunnel
modes (from their `gateway.connected` events) and, with `--tests junit.xml`,
the results of a test run (`pytest --junit-xml junit.xml`). A test checks that
every control is listed, that every test named here exists and that this page
is the rendering of the map.

Status: **met** — the feature exists, the configuration uses it and the cited
tests prove it; **partly** — part of the control is met (the row says which
part is missing and why); **not met** — the row says why.

"""

_FOOTER = """
## Notes

- The numbering follows the shared guideline list; numbers it does not use
  are not rows here.
- "Proved by" names tests in this repository only. Controls that depend on the
  hospital's own organisation (who is an approver, how often the review is
  read) are supported by the reports and events above but are the hospital's
  to perform.
- No WORM store exists yet: control 25 stays *partly* met (detected, not
  prevented) until the log and the recordings are written to one.
"""


def render_markdown(deployment: Deployment | None = None, lang: str = "en") -> str:
    d = deployment or Deployment()
    lab = LABELS[lang]
    rows = [
        "| # | control | what hoshu does | proved by | status | why |",
        "|---|---|---|---|---|---|",
    ]
    for a in assess(d):
        proof = ", ".join(f"`{t}`" for t in a.control.tests) or "—"
        why = "; ".join(a.reasons) or "—"
        rows.append(
            f"| {a.control.number} | {a.control.control} | {a.control.feature} | "
            f"{proof} | {lab[a.status]} | {why} |"
        )
    return _HEADER + "\n".join(rows) + "\n" + _FOOTER


def render_json(deployment: Deployment | None = None, lang: str = "en") -> str:
    d = deployment or Deployment()
    return json.dumps(
        {
            "deployment": d.label,
            "tests_checked": d.test_results is not None,
            "controls": [
                {
                    "number": a.control.number,
                    "control": a.control.control,
                    "status": a.status,
                    "label": LABELS[lang][a.status],
                    "reasons": list(a.reasons),
                    "feature": a.control.feature,
                    "tests": list(a.control.tests),
                }
                for a in assess(d)
            ],
        },
        ensure_ascii=False,
        indent=2,
    )


def render_text(deployment: Deployment | None = None, lang: str = "en") -> str:
    d = deployment or Deployment()
    lab = LABELS[lang]
    lines = [f"{lab['title']} ({lab['for']}: {d.label})"]
    if d.test_results is None:
        lines.append("(cited tests not checked against a test run: --tests junit.xml)")
    lines.append("")
    for a in assess(d):
        lines.append(f"{a.control.number:>2}  {lab[a.status]:<8} {a.control.control}")
        lines += [f"              {lab['why']}: {r}" for r in a.reasons]
        lines += [f"              {lab['tests']}: {t}" for t in a.control.tests]
    return "\n".join(lines)


if __name__ == "__main__":
    print(render_markdown(), end="")
