"""Helpers for the infrastructure tests: the Bicep tree parsed with pycep.

pycep turns a ``.bicep`` file into a JSON-like dict (``parameters``,
``variables``, ``resources``, ``modules``, ``outputs``); expressions become
nested ``{"function": ...}`` / ``{"operator": ...}`` nodes.  These helpers
walk that shape without evaluating anything.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any, cast

from pycep import BicepParser

ROOT = Path(__file__).resolve().parents[2]
BICEP_DIR = ROOT / "infra" / "bicep"
MODULES_DIR = BICEP_DIR / "modules"
SENTINEL_DIR = ROOT / "infra" / "sentinel"
AUDIT_TABLE = BICEP_DIR / "audit-table.json"


def bicep_files() -> list[Path]:
    return sorted(BICEP_DIR.rglob("*.bicep"))


@cache
def parse(path: Path) -> dict[str, Any]:
    # The tests walk the parse as plain JSON, not as pycep's TypedDicts.
    return cast(dict[str, Any], BicepParser().parse(file_path=path))


def walk(node: Any) -> Iterator[Any]:
    """Every dict, list and scalar inside a parsed node, depth first."""
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def function_calls(node: Any, kind: str) -> list[dict[str, Any]]:
    """Every call of a Bicep function (pycep's snake_case name, e.g. load_json_content)."""
    return [
        n["function"]
        for n in walk(node)
        if isinstance(n, dict)
        and isinstance(n.get("function"), dict)
        and n["function"].get("type") == kind
    ]


def property_access(node: Any) -> tuple[str, str] | None:
    """``a.b`` as ("a", "b"), for a plain property access node."""
    if not isinstance(node, dict):
        return None
    op = node.get("operator")
    if not isinstance(op, dict) or op.get("type") != "property_accessor":
        return None
    a, b = op["operands"]["operand_1"], op["operands"]["operand_2"]
    if isinstance(a, str) and isinstance(b, str):
        return a, b
    return None


def loop_source(node: Any) -> tuple[str, str] | None:
    """The array a ``[for x in a.b: ...]`` loop iterates, as ("a", "b")."""
    if not isinstance(node, dict) or "loop_type" not in node:
        return None
    return property_access(node["loop_type"]["detail"]["array_name"])


def resources(path: Path) -> dict[str, dict[str, Any]]:
    return dict(parse(path).get("resources") or {})


def strip_quotes(text: str) -> str:
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] == "'" else text


def resource_type(resource: dict[str, Any]) -> str:
    return str(resource["type"])


def scope_name(resource: dict[str, Any]) -> str | None:
    """The symbolic name a resource's ``scope:`` points at, if any."""
    scope = resource.get("config", {}).get("scope")
    return scope if isinstance(scope, str) else None


PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
