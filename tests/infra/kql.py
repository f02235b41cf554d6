"""Which table columns a KQL query uses.

A deliberately simple reading of KQL, good enough for analytics rules: strip
comments and string literals, then take every identifier that is not a KQL
keyword, not a function call (``name(``), not a property after a dot
(``Details.reason``), not the table itself and not a name the query defines
(``let x =``, ``extend X =``, ``summarize X = ...``, ``project X = ...``).
What is left must be a column of the table.
"""

from __future__ import annotations

import re

KEYWORDS = frozenset(
    """
    and or not in has has_any has_all contains startswith endswith matches regex between
    where project project-away project-rename project-reorder extend summarize by
    let union join kind on inner leftouter rightouter fullouter leftanti rightanti
    leftsemi rightsemi innerunique order sort asc desc nulls first last top take limit
    distinct count as invoke render mv-expand parse with evaluate sample range datatable
    print materialize getschema true false null
    bool boolean datetime dynamic guid int long real string timespan decimal
    """.split()
)

_COMMENT = re.compile(r"//[^\n]*")
_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'')
_IDENT = re.compile(r"(?<![\w.\-])([A-Za-z_][A-Za-z0-9_]*)\b(?!-)")
_DEFINED = re.compile(r"\b([A-Za-z_][A-Za-z0-9_]*)\s*=(?![=~])")


def clean(query: str) -> str:
    """The query without comments and string literals."""
    return _STRING.sub('""', _COMMENT.sub("", query))


def string_literals(query: str) -> list[str]:
    return [m.group(0)[1:-1] for m in _STRING.finditer(_COMMENT.sub("", query))]


def defined_names(query: str) -> set[str]:
    return set(_DEFINED.findall(clean(query)))


def referenced_columns(query: str, table: str) -> set[str]:
    """Identifiers the query reads from ``table`` (see the module docstring).

    A name the query defines counts as a column read wherever it is used before
    its first definition (``where X > 0 | extend X = 1`` reads column X).
    """
    text = clean(query)
    first_definition: dict[str, int] = {}
    for m in _DEFINED.finditer(text):
        first_definition.setdefault(m.group(1), m.start(1))
    found: set[str] = set()
    for m in _IDENT.finditer(text):
        name = m.group(1)
        rest = text[m.end() :].lstrip(" \t")
        if rest.startswith("("):
            continue  # function call
        if name.lower() in KEYWORDS or name == table:
            continue
        if name in first_definition and m.start(1) >= first_definition[name]:
            continue
        found.add(name)
    return found


TABULAR_OPERATORS = frozenset(
    """
    where filter project project-away project-keep project-rename project-reorder extend
    summarize distinct count top take limit sort order join union lookup mv-expand
    mv-apply parse parse-where extract make-series render sample sample-distinct
    getschema as invoke evaluate serialize scan search facet range print
    """.split()
)


def pipe_operators(query: str) -> list[str]:
    """The tabular operator after each ``|`` of the query."""
    return [m.group(1) for m in re.finditer(r"\|\s*([A-Za-z][\w-]*)", clean(query))]


def balanced(query: str) -> bool:
    """Parentheses and brackets nest properly (outside strings and comments)."""
    pairs = {")": "(", "]": "["}
    stack: list[str] = []
    for ch in clean(query):
        if ch in "([":
            stack.append(ch)
        elif ch in ")]":
            if not stack or stack.pop() != pairs[ch]:
                return False
    return not stack
