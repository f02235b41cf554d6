"""Errors of the ``hoshu`` command line.

::

    Exception
     └── CliError          something the user must fix: printed as one line without a
          │                traceback ("hoshu: ..."), the command exits 1
          └── ApiError     the control plane API refused a request (HTTP status and the
                           API's error code) or could not be reached (status 0)

Commands raise these and never let ``httpx`` errors out: :class:`broker.cli.client.Client`
translates transport failures and error answers once.  A missing or malformed argument
is argparse's usage error (exit 2) before any command runs.  Local failures of a command
(a file it cannot read, a verification that fails, ``hoshu audit verify``'s private
``_Usage``) are reported by the command itself with its documented exit code.
"""

from __future__ import annotations


class CliError(Exception):
    """Something the user must fix; printed without a traceback."""

    def __init__(self, message: str, status: int = 0, code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class ApiError(CliError):
    """The API answered with an error (``status``, ``code``) or could not be reached."""
