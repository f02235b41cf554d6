"""The GitHub workflows: schema-valid, zizmor-clean, CI runs the README's test
command on every supported Python, and the deploy workflow signs in with OpenID
Connect, pins every action by commit, and grants each job only what it needs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from tests.infra.bicep import ROOT

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
DEPLOY = ROOT / ".github" / "workflows" / "deploy.yml"
CI = ROOT / ".github" / "workflows" / "ci.yml"
BIN = Path(sys.executable).parent


def _load(path: Path) -> dict[Any, Any]:
    data: dict[Any, Any] = YAML(typ="safe").load(path.read_text())
    return data


def _triggers(workflow: dict[Any, Any]) -> dict[str, Any]:
    # YAML 1.1 reads a bare `on` key as True.
    triggers = workflow.get("on", workflow.get(True))
    assert isinstance(triggers, dict), "the workflow has no `on:` triggers"
    return triggers


def test_workflows_match_the_github_schema() -> None:
    result = subprocess.run(
        [
            str(BIN / "check-jsonschema"),
            "--builtin-schema",
            "vendor.github-workflows",
            *map(str, WORKFLOWS),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_workflows_have_no_zizmor_findings() -> None:
    result = subprocess.run(
        [
            str(BIN / "zizmor"),
            "--offline",
            "--min-severity",
            "low",
            "--no-progress",
            str(ROOT / ".github" / "workflows"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No findings" in result.stdout + result.stderr


def test_ci_runs_the_test_command_on_python_3_11_to_3_13() -> None:
    """Each matrix Python is set up and handed to ./run (HOSHU_PYTHON), which builds
    .venv with it; a runner's own python3 would otherwise be picked first."""
    workflow = _load(CI)
    assert workflow["permissions"] == {}
    (job,) = workflow["jobs"].values()
    assert job["permissions"] == {"contents": "read"}
    assert job["strategy"]["matrix"] == {"python": ["3.11", "3.12", "3.13"]}
    assert job["strategy"]["fail-fast"] is False
    (setup,) = [s for s in job["steps"] if s.get("uses", "").startswith("actions/setup-python@")]
    assert setup["with"]["python-version"] == "${{ matrix.python }}"
    (test,) = [s for s in job["steps"] if "./run test" in s.get("run", "")]
    assert test["run"].endswith("./run test")
    assert "HOSHU_PYTHON" in test["run"]  # sudo keeps it
    assert test["env"]["HOSHU_PYTHON"] == f"${{{{ steps.{setup['id']}.outputs.python-path }}}}"
    assert test["env"]["CI"] == "true"


def _find_python(hoshu_python: str) -> subprocess.CompletedProcess[str]:
    """Run ./run's own find_python function (extracted from the script) in bash."""
    script = (ROOT / "run").read_text()
    func = re.search(r"^find_python\(\) \{\n.*?^\}\n", script, re.M | re.S)
    assert func, "find_python not found in ./run"
    return subprocess.run(
        ["bash", "-c", func.group(0) + "find_python"],
        env={"PATH": os.environ["PATH"], "HOSHU_PYTHON": hoshu_python},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_run_builds_the_venv_with_the_python_named_by_hoshu_python() -> None:
    chosen = _find_python(sys.executable)
    assert chosen.returncode == 0, chosen.stderr
    assert chosen.stdout.strip() == sys.executable
    too_old = _find_python("/bin/false")  # not a Python 3.11+: refused, no fallback
    assert too_old.returncode == 1 and too_old.stdout == ""
    assert "not a Python 3.11 or newer" in too_old.stderr


def test_deploy_runs_what_if_on_pull_requests_and_deploys_on_version_tags() -> None:
    workflow = _load(DEPLOY)
    on = _triggers(workflow)
    assert set(on) == {"pull_request", "push"}
    assert on["push"] == {"tags": ["v*"]}
    jobs = workflow["jobs"]
    assert "pull_request" in jobs["what-if"]["if"]
    assert "refs/tags/v" in jobs["deploy"]["if"]
    assert any("az deployment group what-if" in s.get("run", "") for s in jobs["what-if"]["steps"])
    assert any("az deployment group create" in s.get("run", "") for s in jobs["deploy"]["steps"])
    assert jobs["deploy"]["environment"] == "production"


def test_deploy_compiles_and_lints_before_what_if_or_deploy() -> None:
    jobs = _load(DEPLOY)["jobs"]
    script = "".join(s.get("run", "") for s in jobs["bicep"]["steps"])
    assert "az bicep build" in script and "az bicep lint" in script
    assert jobs["bicep"]["permissions"] == {"contents": "read"}
    assert jobs["what-if"]["needs"] == "bicep" and jobs["deploy"]["needs"] == ["bicep", "image"]


def test_the_release_builds_the_image_and_deploys_it_by_digest() -> None:
    """The image job builds with the script the image tests use and pushes by digest;
    the deploy job imports that digest into the private registry and deploys it."""
    jobs = _load(DEPLOY)["jobs"]
    image = jobs["image"]
    assert image["if"] == jobs["deploy"]["if"]
    assert image["permissions"] == {"contents": "read", "packages": "write"}
    build = "".join(s.get("run", "") for s in image["steps"])
    assert "deploy/image/build.sh" in build and "--digestfile" in build
    deploy = "".join(s.get("run", "") for s in jobs["deploy"]["steps"])
    assert "az acr import" in deploy and '"brokerImage=hoshu/broker@$DIGEST"' in deploy


def test_deploy_uses_oidc_with_ids_from_variables() -> None:
    workflow = _load(DEPLOY)
    assert workflow["permissions"] == {}
    for name, extra in (("what-if", {}), ("deploy", {"packages": "read"})):
        job = workflow["jobs"][name]
        assert job["permissions"] == {"contents": "read", "id-token": "write", **extra}, name
        (login,) = [s for s in job["steps"] if s.get("uses", "").startswith("azure/login@")]
        with_ = login["with"]
        assert set(with_) == {"client-id", "tenant-id", "subscription-id"}, name
        assert all(v.startswith("${{ vars.") for v in with_.values()), name
    text = DEPLOY.read_text()
    assert "client-secret" not in text and "creds:" not in text


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_actions_are_pinned_by_commit_with_a_version_comment(path: Path) -> None:
    uses = re.findall(r"uses:\s*(\S+)(.*)", path.read_text())
    assert uses
    for ref, rest in uses:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", ref), ref
        assert re.search(r"#\s*v\d", rest), f"{ref}: no version comment"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_checkouts_do_not_persist_credentials(path: Path) -> None:
    for job in _load(path)["jobs"].values():
        for step in job["steps"]:
            if step.get("uses", "").startswith("actions/checkout@"):
                assert step["with"]["persist-credentials"] is False


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_no_expression_is_expanded_inside_a_shell_script(path: Path) -> None:
    """Values reach scripts through env only (no template injection)."""
    for job in _load(path)["jobs"].values():
        for step in job["steps"]:
            assert "${{" not in step.get("run", ""), step.get("name")
