"""Patient data stays home: mask patient identifiers before events leave the broker.

Laboratory work leaks patient identifiers into command lines (``grep 0012345678
results.csv``), file names (``山田太郎_20260401.pdf``, ``MRN-00123456.hl7``) and
free text.  Before a record is handed to a sink marked ``mask=True`` (every
cloud sink by default), :class:`Masker` replaces each match of the configured
patterns in the *sensitive* string fields (see ``docs/audit-events.md``):
sensitive columns and sensitive ``Details`` values, recursively.  Public
fields (ids, hashes, sizes, ports) are left alone, so queries and
de-duplication keep working.  The local hash-chained log keeps the original
record, access-controlled on the broker, so the chain still verifies.

Patterns are configurable (:meth:`Masker.from_config`); an invalid pattern is
refused at start-up, never silently skipped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from audit.catalog import CATALOG, Classification
from audit.errors import AuditError
from audit.events import column


class MaskingError(AuditError):
    """A masking rule is invalid."""


@dataclass(frozen=True, slots=True)
class MaskRule:
    """One pattern; ``fields`` limits it to those columns/detail keys (empty: all)."""

    name: str
    pattern: re.Pattern[str]
    fields: frozenset[str] = frozenset()

    @classmethod
    def compile(cls, name: str, pattern: str, fields: Iterable[str] = ()) -> MaskRule:
        try:
            compiled = re.compile(pattern, re.IGNORECASE)
        except re.error as exc:
            raise MaskingError(f"masking rule {name!r}: invalid pattern: {exc}") from exc
        if compiled.match(""):
            raise MaskingError(f"masking rule {name!r} matches the empty string")
        return cls(name, compiled, frozenset(fields))


# Defaults meant for Japanese hospital laboratories; every site can replace them.
DEFAULT_RULES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    # "患者ID: 123", "カルテ番号=A-77", "patient_id=0042", "PID:XY12"
    (
        "patient-label",
        r"(?:患者\s*(?:ID|番号|名|氏名)|カルテ\s*(?:番号|No\.?)|診察券番号|patient[_ -]?(?:id|no|name)"  # noqa: E501
        r"|\bMRN|\bPID)\s*[:：=_#-]?\s*[^\s,;/\\\"']+",
        (),
    ),
    # medical record numbers: a run of 8 to 10 digits standing alone
    ("mrn-digits", r"(?<![0-9])[0-9]{8,10}(?![0-9])", ()),
    # personal names written in kanji or kana inside file names
    (
        "name-in-filename",
        r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff々]{2,}",
        ("TargetFileName", "Object", "file", "path"),
    ),
)


class Masker:
    """Replaces patient-identifier matches with ``[masked:<rule>]`` in sensitive fields."""

    def __init__(self, rules: Sequence[MaskRule]) -> None:
        self.rules = tuple(rules)

    @classmethod
    def default(cls) -> Masker:
        return cls([MaskRule.compile(n, p, f) for n, p, f in DEFAULT_RULES])

    @classmethod
    def from_config(cls, rules: Iterable[Mapping[str, Any]], *, defaults: bool = True) -> Masker:
        """Rules as ``{"name": ..., "pattern": ..., "fields": [...]}``; defaults first."""
        compiled = [MaskRule.compile(n, p, f) for n, p, f in DEFAULT_RULES] if defaults else []
        for i, r in enumerate(rules):
            if not isinstance(r.get("pattern"), str):
                raise MaskingError(f"masking rule #{i + 1} has no pattern")
            compiled.append(
                MaskRule.compile(
                    str(r.get("name", f"rule-{i + 1}")), r["pattern"], r.get("fields") or ()
                )
            )
        return cls(compiled)

    def mask_text(self, text: str, field: str = "") -> str:
        for rule in self.rules:
            if rule.fields and field not in rule.fields:
                continue
            text = rule.pattern.sub(f"[masked:{rule.name}]", text)
        return text

    def _mask_value(self, value: Any, field: str) -> Any:
        if isinstance(value, str):
            return self.mask_text(value, field)
        if isinstance(value, Mapping):
            return {k: self._mask_value(v, str(k)) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._mask_value(v, field) for v in value]
        return value

    def mask_record(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of ``record`` with sensitive fields masked (unknown types: all details)."""
        out = dict(record)
        for name, value in record.items():
            if name == "Details" or not isinstance(value, str):
                continue
            try:
                cls = column(name).classification
            except KeyError:
                cls = Classification.SENSITIVE
            if cls is Classification.SENSITIVE:
                out[name] = self.mask_text(value, name)
        details = record.get("Details")
        if isinstance(details, Mapping):
            known = CATALOG.get(str(record.get("EventType")))
            declared: Mapping[str, Classification] = known.details if known else {}
            out["Details"] = {
                k: (v if declared.get(k) is Classification.PUBLIC else self._mask_value(v, k))
                for k, v in details.items()
            }
        return out
