"""Every logger in the product is named after its module (``logging.getLogger(__name__)``),
so an operator can filter or silence one module by its dotted path. Naming another
library's logger to set its level (``getLogger("azure").setLevel(...)``) is allowed."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("gateway", "broker", "audit", "wire")
OURS = {*PACKAGES, "hoshu"}


def _is_get_logger(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    return (
        func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    ) == "getLogger"


def _verdict(call: ast.Call, parent: ast.AST | None) -> bool:
    """True if the call is ``getLogger(__name__)``, or names a third-party logger only to
    configure it (the call's result is used right away, never kept as a logger)."""
    args = call.args
    if len(args) == 1 and not call.keywords and isinstance(args[0], ast.Name):
        return args[0].id == "__name__"
    if (
        len(args) == 1
        and not call.keywords
        and isinstance(args[0], ast.Constant)
        and isinstance(args[0].value, str)
    ):
        return args[0].value.split(".")[0] not in OURS and isinstance(parent, ast.Attribute)
    return False


def test_every_logger_is_named_after_its_module() -> None:
    found, wrong = 0, []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            parents = {
                child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)
            }
            for node in ast.walk(tree):
                if _is_get_logger(node):
                    assert isinstance(node, ast.Call)
                    found += 1
                    if not _verdict(node, parents.get(node)):
                        wrong.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    assert found >= 20  # the scan sees the product's loggers
    assert wrong == []


def test_the_rule_refuses_a_hand_named_or_kept_logger() -> None:
    def verdicts(source: str) -> list[bool]:
        tree = ast.parse(source)
        parents = {c: n for n in ast.walk(tree) for c in ast.iter_child_nodes(n)}
        return [
            _verdict(n, parents.get(n))
            for n in ast.walk(tree)
            if isinstance(n, ast.Call) and _is_get_logger(n)
        ]

    assert verdicts("log = logging.getLogger(__name__)") == [True]
    assert verdicts('logging.getLogger("azure").setLevel(logging.WARNING)') == [True]
    assert verdicts('log = logging.getLogger("hoshu.health")') == [False]
    assert verdicts('logging.getLogger("broker.x").setLevel(1)') == [False]
    assert verdicts('log = logging.getLogger("azure")') == [False]
    assert verdicts("log = getLogger(name)") == [False]
