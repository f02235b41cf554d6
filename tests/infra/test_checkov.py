"""checkov's Bicep scan passes: no failed check, no parse error, and every
skip carries its reason inline (`// checkov:skip=CKV_AZURE_xxx: reason`).

checkov runs from its own virtualenv, .venv-checkov, which `./run test`
creates from requirements-checkov.lock. The scan runs once per session."""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

import pytest

from tests.infra.bicep import BICEP_DIR, ROOT, bicep_files

CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"

pytestmark = pytest.mark.xdist_group("checkov")


# A module that breaks the rules on purpose, scanned with the real tree: proves
# the scan runs the checks it should (a broken scanner would pass everything).
CANARY = """
resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: 'kv-canary'
  location: 'japaneast'
  properties: {
    tenantId: tenant().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enablePurgeProtection: false
    publicNetworkAccess: 'Enabled'
  }
}
"""
CANARY_FAILURES = {"CKV_AZURE_110", "CKV_AZURE_189"}


@pytest.fixture(scope="module")
def scan(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    assert CHECKOV.exists(), (
        f"{CHECKOV} is missing: `./run test` installs it from requirements-checkov.lock"
    )
    work = tmp_path_factory.mktemp("checkov")
    shutil.copytree(BICEP_DIR, work / "bicep")
    (work / "bicep" / "canary").mkdir()
    (work / "bicep" / "canary" / "vault.bicep").write_text(CANARY)
    result = subprocess.run(
        [
            str(CHECKOV),
            "--directory",
            str(work / "bicep"),
            "--framework",
            "bicep",
            "--skip-download",
            "--output",
            "json",
            "--compact",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={
            "PATH": "/usr/bin:/bin",
            "HOME": str(ROOT / ".venv-checkov"),
            "BC_SKIP_MAPPING": "TRUE",
            "LOG_LEVEL": "ERROR",
        },
    )
    assert result.returncode in (0, 1), result.stderr[-2000:]
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def _failed(scan: dict[str, Any]) -> list[dict[str, Any]]:
    failed: list[dict[str, Any]] = scan["results"].get("failed_checks", [])
    return failed


def test_no_failed_checks(scan: dict[str, Any]) -> None:
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']}:{c['file_line_range']})"
        for c in _failed(scan)
        if not c["file_path"].lstrip("/").startswith("canary/")
    ]
    assert failed == []


def test_the_scan_catches_a_module_that_breaks_the_rules(scan: dict[str, Any]) -> None:
    caught = {
        c["check_id"] for c in _failed(scan) if c["file_path"].lstrip("/").startswith("canary/")
    }
    assert caught >= CANARY_FAILURES


def test_every_file_was_parsed_and_scanned(scan: dict[str, Any]) -> None:
    """A file checkov cannot parse would be silently unchecked."""
    summary = scan["summary"]
    assert summary["parsing_errors"] == 0
    assert summary["resource_count"] >= 80
    assert summary["passed"] >= 25
    scanned = {c["file_path"].lstrip("/") for c in scan["results"]["passed_checks"]}
    for expected in (
        "modules/keyvault.bicep",
        "modules/storage.bicep",
        "modules/registry.bicep",
        "modules/network.bicep",
        "main.bicep",
    ):
        assert expected in scanned, f"no check ran on {expected}"
    assert len(bicep_files()) >= 15


def test_every_skip_is_justified_inline(scan: dict[str, Any]) -> None:
    skipped = scan["results"].get("skipped_checks", [])
    for check in skipped:
        reason = check["check_result"].get("suppress_comment", "").strip()
        assert reason != "No comment provided" and len(reason) >= 40, (
            f"{check['check_id']} on {check['resource']} is skipped without a real reason"
        )
    # Each skip is visible in the source, next to the resource it concerns.
    source = "".join(p.read_text() for p in bicep_files())
    for check in skipped:
        assert f"// checkov:skip={check['check_id']}:" in source
