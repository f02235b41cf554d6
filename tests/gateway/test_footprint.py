"""``pip install 'hoshu[gateway]'`` needs no web framework or ORM at run time."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("fastapi", "starlette", "sqlalchemy", "uvicorn", "alembic", "psycopg", "pydantic_settings")


def test_the_whole_gateway_imports_without_web_framework_or_orm() -> None:
    code = (
        "import sys\n"
        "import gateway.cli, gateway.agent, gateway.enroll, gateway.control, "
        "gateway.inventory, gateway.server, gateway.link, gateway.auditlog\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == ""
