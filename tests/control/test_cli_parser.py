"""The ``hoshu`` command line's shape: each action declares what it needs, and argparse
refuses what is missing before any call reaches the API."""

from __future__ import annotations

import pytest

from broker.cli.main import build_parser, main


@pytest.mark.parametrize(
    ("argv", "missing"),
    [
        (["admin", "users", "create", "kato"], "--full-name"),
        (["admin", "users", "add-key", "kato"], "--key-file"),
        (["admin", "users", "deactivate"], "name"),
        (["admin", "orgs", "create", "gamma-labs"], "--kind"),
        (["admin", "contracts", "create", "--vendor", "v"], "--hospital"),
        (["admin", "contracts", "end"], "id"),
        (["admin", "instruments", "accept-key", "hem-1"], "--fingerprint"),
        (["admin", "instruments", "show"], "name"),
        (["gateway", "revoke"], "name"),
        (["keys", "add"], "file"),
        (["tokens", "create"], "name"),
    ],
)
def test_a_missing_argument_is_a_usage_error_naming_it(
    argv: list[str],
    missing: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HOSHU_TOKEN", "not-used")
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "required" in err and missing in err


@pytest.mark.parametrize(
    ("argv", "func"),
    [
        (["admin", "users"], "cmd_users_list"),
        (["admin", "users", "--org", "acme", "list"], "cmd_users_list"),
        (["admin", "orgs"], "cmd_orgs_list"),
        (["gateway"], "cmd_gateway_list"),
        (["keys"], "cmd_keys_list"),
        (["tokens"], "cmd_tokens_list"),
        (
            ["admin", "instruments", "set", "hem-1", "--hospital", "h", "--port", "22"],
            "cmd_instruments_set",
        ),
    ],
)
def test_an_area_alone_lists_and_each_action_has_its_own_command(
    argv: list[str], func: str
) -> None:
    assert build_parser().parse_args(argv).func.__name__ == func


def test_api_may_come_before_or_after_the_action() -> None:
    parser = build_parser()
    before = parser.parse_args(["admin", "orgs", "--api", "http://a:1", "list"])
    after = parser.parse_args(["admin", "orgs", "list", "--api", "http://b:2"])
    neither = parser.parse_args(["admin", "orgs", "list"])
    assert (before.api, after.api, neither.api) == ("http://a:1", "http://b:2", None)
