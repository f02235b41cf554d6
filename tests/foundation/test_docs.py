"""Documents a hospital relies on exist and say what they promise."""

from __future__ import annotations

from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_shared_responsibility_table_names_each_party_for_every_area() -> None:
    text = (DOCS / "shared-responsibility.md").read_text()
    header = next(line for line in text.splitlines() if line.startswith("| area"))
    assert [c.strip() for c in header.strip("|").split("|")][:3] == [
        "area",
        "hospital",
        "vendor (instrument maker, runs the broker)",
    ]
    rows = [
        line
        for line in text.splitlines()
        if line.startswith("| ") and not line.startswith(("| area", "|---"))
    ]
    assert len(rows) >= 10
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 5 and all(cells), row
    for area in ("Kill switch", "Approvals", "Second factor", "Patient data", "Emergencies"):
        assert any(r.startswith(f"| {area}") for r in rows), area


def test_readme_links_every_document() -> None:
    readme = (DOCS.parent / "README.md").read_text()
    for doc in sorted(DOCS.glob("*.md")):
        assert f"docs/{doc.name}" in readme, f"README does not link docs/{doc.name}"
