"""A hospital's command rules for interactive shells: data and its checks (pure).

Each rule is a mapping ``{"action": "deny" | "hold", "pattern": <Python regular
expression searched in the command line>, "reason": <told to the engineer>,
"instrument": <instrument name, empty: every one>, "department": <empty: any>}``,
kept in the hospital's :class:`~broker.access.model.Policy` (``command_rules``).
:func:`validate` refuses a bad list with :class:`~broker.access.errors.InvalidInput`
(nothing is changed); :func:`rules_for` picks the rules of one instrument.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from broker.access.errors import InvalidInput

ACTIONS = ("deny", "hold")
KEYS = frozenset({"action", "pattern", "reason", "instrument", "department"})
MAX_RULES = 100
MAX_PATTERN = 500
MAX_TEXT = 200


def validate(raw: Any) -> list[dict[str, str]]:
    """The rules as stored (every key a string), or InvalidInput naming the fault."""
    if not isinstance(raw, list) or len(raw) > MAX_RULES:
        raise InvalidInput(f"command_rules must be a list of at most {MAX_RULES} rules")
    out: list[dict[str, str]] = []
    for n, rule in enumerate(raw, 1):
        if not isinstance(rule, Mapping):
            raise InvalidInput(f"command rule {n} must be an object")
        unknown = set(rule) - KEYS
        if unknown:
            raise InvalidInput(f"command rule {n}: unknown keys {', '.join(sorted(unknown))}")
        clean = {k: str(rule.get(k) or "") for k in sorted(KEYS)}
        if clean["action"] not in ACTIONS:
            raise InvalidInput(f"command rule {n}: action must be deny or hold")
        if not clean["pattern"] or len(clean["pattern"]) > MAX_PATTERN:
            raise InvalidInput(f"command rule {n}: a pattern of 1 to {MAX_PATTERN} characters")
        try:
            re.compile(clean["pattern"])
        except re.error as exc:
            raise InvalidInput(f"command rule {n}: the pattern is not valid ({exc})") from exc
        if any(len(clean[k]) > MAX_TEXT for k in ("reason", "instrument", "department")):
            raise InvalidInput(f"command rule {n}: reason, instrument, department too long")
        out.append(clean)
    return out


def rules_for(
    rules: Iterable[Mapping[str, Any]], instrument: str, department: str
) -> tuple[dict[str, str], ...]:
    """The rules that apply on ``instrument`` (of ``department``)."""
    return tuple(
        {
            "action": str(r["action"]),
            "pattern": str(r["pattern"]),
            "reason": str(r.get("reason") or ""),
        }
        for r in rules
        if (not r.get("instrument") or r.get("instrument") == instrument)
        and (not r.get("department") or r.get("department") == department)
    )
