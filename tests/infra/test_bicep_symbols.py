"""A second, independent reading of the templates with the tree-sitter Bicep
grammar, standing in for what `bicep build` and `bicep lint` would report
(no Bicep compiler can be installed here, see docs/deploy-azure.md):

- the file is free of syntax errors under this grammar too;
- every name an expression uses is declared in the file (BCP057);
- every parameter and variable is used (linter rules no-unused-params/vars).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import tree_sitter_bicep
from tree_sitter import Language, Node, Parser

from tests.infra.bicep import BICEP_DIR, bicep_files

PARSER = Parser(Language(tree_sitter_bicep.language()))
DECLARATIONS = {
    "parameter_declaration",
    "variable_declaration",
    "resource_declaration",
    "module_declaration",
    "output_declaration",
    "type_declaration",
    "user_defined_function",
    "import_statement",
}
NAMESPACES = {"sys", "az"}


def _tree(path: Path) -> Node:
    return PARSER.parse(path.read_bytes()).root_node


def _nodes(node: Node) -> Iterator[Node]:
    yield node
    for child in node.children:
        yield from _nodes(child)


def _declared(root: Node) -> dict[str, str]:
    """Top-level declarations (name -> kind), plus loop and lambda variables."""
    names: dict[str, str] = {}
    for node in _nodes(root):
        if node.type in DECLARATIONS:
            ident = next((c for c in node.children if c.type == "identifier"), None)
            if ident is not None and ident.text is not None:
                names[ident.text.decode()] = node.type
        elif node.type in ("loop_variable", "loop_enumerator") and node.text is not None:
            names[node.text.decode()] = node.type
        elif node.type == "for_statement" and node.children[2].type == "identifier":
            loop_var = node.children[2].text  # `[for x in ...]` (no parentheses)
            if loop_var is not None:
                names[loop_var.decode()] = "loop_variable"
        elif node.type == "lambda_expression":
            for child in node.children:
                if child.type == "=>":
                    break
                for sub in _nodes(child):
                    if sub.type == "identifier" and sub.text is not None:
                        names[sub.text.decode()] = "lambda_parameter"
    return names


def _is_reference(node: Node) -> bool:
    """An identifier that names a value (not a key, a function, or a declaration)."""
    parent = node.parent
    if parent is None:
        return False
    if parent.type in DECLARATIONS | {"loop_variable", "loop_enumerator"}:
        return False
    if parent.type == "object_property" and parent.children[0] == node:
        return False  # object key
    if parent.type == "call_expression" and parent.children[0] == node:
        return False  # function name (built-in or namespace)
    if parent.type == "resource_expression" and parent.children[0] != node:
        return False  # nested resource name after ::
    if parent.type == "lambda_expression":
        return False
    if parent.type == "for_statement" and parent.children[2] == node:
        return False  # the loop variable itself
    return True


def _references(root: Node) -> set[str]:
    return {
        n.text.decode()
        for n in _nodes(root)
        if n.type == "identifier" and n.text is not None and _is_reference(n)
    }


@pytest.mark.parametrize("path", bicep_files(), ids=lambda p: str(p.relative_to(BICEP_DIR)))
def test_file_has_no_syntax_error_under_the_tree_sitter_grammar(path: Path) -> None:
    root = _tree(path)
    errors = [
        f"{n.start_point}: {n.text!r}" for n in _nodes(root) if n.type == "ERROR" or n.is_missing
    ]
    assert not root.has_error and errors == []


@pytest.mark.parametrize("path", bicep_files(), ids=lambda p: str(p.relative_to(BICEP_DIR)))
def test_every_name_used_is_declared(path: Path) -> None:
    root = _tree(path)
    undeclared = _references(root) - set(_declared(root)) - NAMESPACES
    assert not undeclared, f"{path.name} uses undeclared names {sorted(undeclared)}"


@pytest.mark.parametrize("path", bicep_files(), ids=lambda p: str(p.relative_to(BICEP_DIR)))
def test_every_parameter_and_variable_is_used(path: Path) -> None:
    root = _tree(path)
    used = _references(root)
    unused = sorted(
        name
        for name, kind in _declared(root).items()
        if kind in ("parameter_declaration", "variable_declaration") and name not in used
    )
    assert unused == [], f"{path.name}: unused {unused}"


def test_the_checks_catch_a_typo_and_a_syntax_error() -> None:
    source = b"param used string\nparam spare int\nvar v = '${usd}'\noutput o string = v\n"
    root = PARSER.parse(source).root_node
    assert _references(root) - set(_declared(root)) == {"usd"}
    assert "spare" not in _references(root)
    assert PARSER.parse(b"resource r 'a@1' = {\n  name: 'x'\n").root_node.has_error
