"""HTTP client of the ``hoshu`` CLI: API address, cached bearer token, output.

The API is ``--api URL`` / ``$HOSHU_API`` (default http://127.0.0.1:8440).  The
bearer token from ``hoshu login`` is cached in ``$HOSHU_CONFIG_DIR/token.json``
(default ``~/.config/hoshu``), mode 0600; ``$HOSHU_TOKEN`` overrides it (API
tokens for scripts).  Every request has a timeout; every API error is shown as
its one-line message and the command exits non-zero.

:class:`Client` is the CLI's one HTTP client: every command module builds it
(``Client.from_args`` or ``Client(api, load_token())``) and reads the token with
:func:`load_token` only.  Errors: :mod:`broker.cli.errors`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx

from audit.keyfiles import replace_secret
from broker.cli.errors import ApiError, CliError

__all__ = [
    "DEFAULT_API",
    "TIMEOUT_S",
    "ApiError",
    "CliError",
    "Client",
    "add_action",
    "add_actions",
    "add_api_argument",
    "api_url",
    "config_dir",
    "forget_token",
    "load_token",
    "run",
    "save_token",
    "token_path",
]

DEFAULT_API = "http://127.0.0.1:8440"
TIMEOUT_S = 30.0


def config_dir() -> Path:
    return Path(os.environ.get("HOSHU_CONFIG_DIR") or Path.home() / ".config" / "hoshu")


def token_path() -> Path:
    return config_dir() / "token.json"


def save_token(api: str, username: str, data: dict[str, Any]) -> None:
    path = token_path()
    # a fresh 0600 file renamed into place: an older, wider token file keeps no say
    replace_secret(
        path,
        json.dumps(
            {
                "api": api,
                "username": username,
                "access_token": data["access_token"],
                "expires_at": data["expires_at"],
                "scopes": data.get("scopes", []),
            }
        ).encode(),
    )


def load_token() -> str:
    if os.environ.get("HOSHU_TOKEN"):
        return os.environ["HOSHU_TOKEN"]
    try:
        data = json.loads(token_path().read_text())
    except (OSError, ValueError):
        return ""
    # "token": the key of token files written by early versions of `hoshu login`
    return str(data.get("access_token") or data.get("token") or "")


def forget_token() -> None:
    try:
        token_path().unlink()
    except FileNotFoundError:
        pass


def add_api_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--api", default=None, help=f"control plane URL (env HOSHU_API, default {DEFAULT_API})"
    )


def add_actions(parser: argparse.ArgumentParser, default: Any) -> Any:
    """Sub-commands of an area (``hoshu admin users create ...``); the area alone runs
    ``default`` (its list).  Each action's arguments are declared on its own parser, so
    argparse, not the command, says what is missing (exit status 2)."""
    parser.set_defaults(func=default)
    return parser.add_subparsers(dest="action", metavar="ACTION")


def add_action(actions: Any, name: str, func: Any, help: str) -> argparse.ArgumentParser:
    """One action of an area; it takes ``--api`` after its name too."""
    p: argparse.ArgumentParser = actions.add_parser(name, help=help)
    # SUPPRESS: an --api given before the action is not reset by this parser's default
    p.add_argument("--api", default=argparse.SUPPRESS, help="control plane URL")
    p.set_defaults(func=func)
    return p


def api_url(args: argparse.Namespace) -> str:
    return str(getattr(args, "api", None) or os.environ.get("HOSHU_API") or DEFAULT_API)


class Client:
    def __init__(
        self,
        api: str,
        token: str = "",
        timeout: float = TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.api = api.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=self.api, headers=headers, timeout=timeout, transport=transport
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace, *, auth: bool = True) -> Client:
        token = load_token() if auth else ""
        if auth and not token:
            raise CliError("not signed in: run `hoshu login` first")
        return cls(api_url(args), token)

    @property
    def http(self) -> httpx.Client:
        """The underlying ``httpx`` client (base URL, bearer token, timeout set), for
        commands that read raw answers: files, streams, their own error lines."""
        return self._http

    def unreachable(self, exc: httpx.HTTPError) -> ApiError:
        return ApiError(f"the hoshu API at {self.api} cannot be reached ({exc})")

    def call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
    ) -> Any:
        try:
            r = self._http.request(method, path, json=body, params=params)
        except httpx.HTTPError as exc:
            raise self.unreachable(exc) from exc
        if r.status_code == 204:
            return None
        try:
            data = r.json()
        except ValueError as exc:
            raise ApiError(
                f"unexpected answer from {self.api} (HTTP {r.status_code})", r.status_code
            ) from exc
        if r.status_code >= 400:
            err = data.get("error", {}) if isinstance(data, dict) else {}
            message = str(err.get("message") or f"HTTP {r.status_code}")
            details = err.get("details")
            if isinstance(details, list) and details:
                message += ": " + "; ".join(
                    f"{'.'.join(d.get('loc', [])[1:])} {d.get('msg', '')}".strip()
                    for d in details[:5]
                    if isinstance(d, dict)
                )
            if r.status_code == 401 and err.get("code") in ("token_expired", "unauthenticated"):
                message += " (run `hoshu login`)"
            raise ApiError(message, r.status_code, str(err.get("code", "")))
        return data

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run(func: Any) -> Any:
    """Wrap a command: CliError → message on stderr and exit status 1."""

    def wrapper(args: argparse.Namespace) -> int:
        try:
            result: int = func(args)
            return result
        except CliError as exc:
            print(f"hoshu: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130

    wrapper.__name__ = func.__name__
    wrapper.__doc__ = func.__doc__
    return wrapper
