"""The commands the guides show are commands the CLI accepts."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from broker.cli.main import build_parser

DOCS = Path(__file__).parents[2] / "docs"


def commands(doc: str) -> list[str]:
    out: list[str] = []
    in_code = False
    pending = ""
    for line in (DOCS / doc).read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
            continue
        if not in_code:
            continue
        text = pending + line.strip()
        if text.endswith("\\"):
            pending = text[:-1] + " "
            continue
        pending = ""
        if text.startswith("hoshu "):
            text = re.sub(r"\s+#.*$", "", text).split("<")[0]
            out.append(text.replace("…", "x"))
    return out


@pytest.mark.parametrize("doc", ["approver.md", "admin.md"])
def test_every_command_in_the_guide_parses(doc: str) -> None:
    found = commands(doc)
    assert len(found) >= 8
    parser = build_parser()
    for line in found:
        try:
            args = parser.parse_args(shlex.split(line)[1:])
        except SystemExit:
            pytest.fail(f"{doc}: the CLI refuses `{line}`")
        assert callable(getattr(args, "func", None)), line
