"""Settings exist or fail: a mistyped HOSHU_* variable stops the broker naming it, every
HOSHU_* name the deployment and the docs use is one something reads, and values that
cannot work together are refused at start."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from broker.settings import OTHER_VARIABLES, BrokerSettings, UnknownSettingError

ROOT = Path(__file__).resolve().parents[2]
NAME = re.compile(r"\bHOSHU_[A-Z0-9_]*[A-Z0-9]\b")
# GitHub repository variables and secrets the deploy workflow reads (vars.HOSHU_X):
# the operator sets them in GitHub, never in the broker's environment.
PIPELINE = re.compile(r"\b(?:vars|secrets)\.(HOSHU_[A-Z0-9_]+)")


def _pipeline_variables() -> set[str]:
    found: set[str] = set()
    for wf in (ROOT / ".github" / "workflows").glob("*.yml"):
        found |= set(PIPELINE.findall(wf.read_text()))
    return found


def test_a_mistyped_variable_stops_hoshu_serve_naming_it(tmp_path: Path) -> None:
    """``hoshu serve`` with HOSHU_RECORDINGS_DIRR set exits non-zero before it listens,
    and the error names the variable."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("HOSHU_")}
    env |= {
        "HOSHU_DATA_DIR": str(tmp_path / "data"),
        "HOSHU_RECORDINGS_DIRR": "x",
        "HOSHU_API_PORT": "1",
    }  # were it to start, it could not listen here
    proc = subprocess.run(
        [sys.executable, "-m", "broker.cli.main", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0
    assert "HOSHU_RECORDINGS_DIRR" in proc.stderr
    assert "unknown setting" in proc.stderr
    assert not (tmp_path / "data").exists()  # stopped before touching anything


def test_a_bad_value_stops_hoshu_serve(tmp_path: Path) -> None:
    """A value that cannot work (Entra sign-in to SQLite) also stops it, with the reason."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("HOSHU_")}
    env |= {"HOSHU_DATA_DIR": str(tmp_path / "data"), "HOSHU_DATABASE_AUTH": "entra"}
    proc = subprocess.run(
        [sys.executable, "-m", "broker.cli.main", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0
    assert "database_auth 'entra' needs database_url of a PostgreSQL server" in proc.stderr


def test_client_and_tooling_variables_do_not_stop_the_broker() -> None:
    """The CLI's, the gateway's and the tooling's own HOSHU_* variables may share the
    broker's environment; settings may be spelled in any case, as they are read."""
    env = dict.fromkeys(OTHER_VARIABLES, "x") | {"hoshu_data_dir": "d", "PATH": "/bin"}
    assert BrokerSettings.unknown_variables(env) == []
    assert BrokerSettings.unknown_variables({"HOSHU_API_URL": "x"}) == ["HOSHU_API_URL"]
    assert not set(OTHER_VARIABLES) & BrokerSettings.field_variables()


def test_unknown_variables_are_all_named_with_a_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOSHU_DATABASE_ULR", "x")
    monkeypatch.setenv("HOSHU_NOTHING_LIKE_IT", "y")
    with pytest.raises(UnknownSettingError) as info:
        BrokerSettings.from_env()
    assert info.value.names == ["HOSHU_DATABASE_ULR", "HOSHU_NOTHING_LIKE_IT"]
    assert "HOSHU_DATABASE_ULR (did you mean HOSHU_DATABASE_URL?)" in str(info.value)


@pytest.mark.parametrize("where", ["infra/bicep", "docs"])
def test_every_hoshu_name_in_deployment_and_docs_is_read_by_something(where: str) -> None:
    """Every HOSHU_* name in infra/bicep and docs/*.md is a broker setting, a variable
    another hoshu program reads (OTHER_VARIABLES), or a GitHub variable the deploy
    workflow reads; nothing is set that nothing reads."""
    known = BrokerSettings.field_variables() | OTHER_VARIABLES.keys() | _pipeline_variables()
    files = (
        sorted((ROOT / where).rglob("*.bicep"))
        if where == "infra/bicep"
        else sorted((ROOT / "docs").glob("*.md"))
    )
    assert files
    stray = {
        f"{f.relative_to(ROOT)}: {name}"
        for f in files
        for name in NAME.findall(f.read_text())
        if name not in known
    }
    assert not stray, sorted(stray)


GUID = str(uuid.uuid4())


@pytest.mark.parametrize(
    ("values", "error"),
    [
        ({"database_auth": "entra"}, "needs database_url of a PostgreSQL server"),
        (
            {"database_auth": "entra", "database_url": "postgresql://id:pw@h/db"},
            "must carry no password",
        ),
        ({"key_vault_url": "http://v.vault.azure.net"}, "must be an https:// URL"),
        ({"key_vault_url": "https://v.vault.azure.net/keys/x"}, "must have no path"),
        ({"recordings_url": "https://acct.blob.core.windows.net"}, "must name the container"),
        ({"recordings_url": "https://acct.blob.core.windows.net/rec?sig=abc"}, "no query"),
        ({"azure_client_id": "broker-identity"}, "is not a client id"),
        ({"audit_store_url": "postgresql://h/db"}, "would be ignored"),
        (
            {"azure_logs_endpoint": "https://dce.ingest.monitor.azure.com"},
            "azure_dcr_immutable_id is not",
        ),
        ({"replica_id": "../etc"}, "replica_id"),
        ({"drain_grace_s": -1}, "drain_grace_s"),
    ],
)
def test_values_that_cannot_work_are_refused(values: dict[str, object], error: str) -> None:
    with pytest.raises(ValueError, match=re.escape(error)):
        BrokerSettings(**values)  # type: ignore[arg-type]


def test_the_reference_deployment_values_are_accepted() -> None:
    s = BrokerSettings(
        database_url="postgresql://id-hoshu-broker@psql-hoshu.postgres.database.azure.com"
        "/hoshu?sslmode=require",
        database_auth="entra",
        azure_client_id=GUID,
        key_vault_url="https://kv-hoshu.vault.azure.net/",
        recordings_url="https://sthoshu.blob.core.windows.net/recordings",
        audit_store="postgres",
        replica_id="hoshu-broker--rev1-abc12",
    )
    assert s.key_vault_url == "https://kv-hoshu.vault.azure.net"
    assert s.recordings_url.endswith("/recordings")
