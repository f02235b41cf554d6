"""CredSSP (NLA) for the broker's RDP client: asyauth, fenced.

:mod:`broker.desktop.rdpclient` hands aardwolf the context made here
(:func:`credssp_context`); it is the one place that knows asyauth's insides.  What is
changed of asyauth 0.0.23:

- CredSSP carries raw NTLM tokens, as mstsc and FreeRDP send them when NTLM is the
  package (asyauth wraps them in SPNEGO, which FreeRDP 2's server refuses; Windows
  takes both);
- the NTLMv2 response carries the server's own time from its challenge
  (``MsvAvTimestamp``, as MS-NLMP 3.1.5.1.2 asks): asyauth puts its clock there, and
  FreeRDP's server then computes another proof and denies the logon;
- asyauth's DEBUG lines are dropped whatever its log level: they hold the NTLM
  session, signing and sealing keys, which open the CredSSP message that carries the
  password.

Only a password is used (NTLM); Kerberos, smart cards and Remote Credential Guard are
not.  asyauth sends the password (``TSCredentials``) only after the server has proved,
in ``pubKeyAuth``, that it holds the key of the TLS certificate the caller checked.
"""

from __future__ import annotations

import contextlib
import logging
import struct
from typing import Any

import asyauth.protocols.ntlm.structures.challenge_response as _ntlm_response
from asyauth._version import __version__ as _asyauth_version
from asyauth.common.constants import asyauthProtocol
from asyauth.common.credentials import UniCredential
from asyauth.common.credentials.credssp import CREDSSPCredential
from asyauth.protocols.credssp.client.native import CredSSPClientNative
from asyauth.protocols.ntlm.messages.challenge import NTLMChallenge
from asyauth.protocols.ntlm.structures.avpair import AVPAIRType

ASYAUTH_VERSION = "0.0.23"
if _asyauth_version != ASYAUTH_VERSION:  # the overrides below are of this version's insides
    raise ImportError(f"hoshu's RDP client's CredSSP is built on asyauth {ASYAUTH_VERSION}")

# NTSTATUS codes a CredSSP server sends (TSRequest errorCode) for a refused login
LOGON_REFUSED_STATUS = {
    0xC000006D,  # STATUS_LOGON_FAILURE
    0xC000006A,  # STATUS_WRONG_PASSWORD
    0xC0000064,  # STATUS_NO_SUCH_USER
    0xC000006E,  # STATUS_ACCOUNT_RESTRICTION
    0xC0000071,  # STATUS_PASSWORD_EXPIRED
    0xC0000072,  # STATUS_ACCOUNT_DISABLED
    0xC0000193,  # STATUS_ACCOUNT_EXPIRED
    0xC0000224,  # STATUS_PASSWORD_MUST_CHANGE
    0xC0000234,  # STATUS_ACCOUNT_LOCKED_OUT
    0x8009030C,  # SEC_E_LOGON_DENIED
}


def _no_debug(record: logging.LogRecord) -> bool:
    return record.levelno > logging.DEBUG


# asyauth writes NTLM session and sealing keys at DEBUG: dropped whatever the level
# (a logger's filter sees only its own records: each of asyauth's is named)
logging.getLogger("asyauth").addFilter(_no_debug)
logging.getLogger("asyauth.ntlm").addFilter(_no_debug)
logging.getLogger("asyauth.credssp").addFilter(_no_debug)
logging.getLogger("asyauth.kerberos").addFilter(_no_debug)


class _RawNtlm:
    """NTLM as CredSSP's inner protocol, its tokens sent as they are (what mstsc and
    FreeRDP send when NTLM is the package), not wrapped in SPNEGO as asyauth's
    CredSSP does: FreeRDP 2's server takes only raw NTLM, Windows takes both."""

    def __init__(self, ntlm: Any) -> None:
        self.ntlm = ntlm

    async def authenticate(self, token: bytes | None, **kwargs: Any) -> Any:
        if token is not None and self.ntlm.ntlmChallenge is None:
            self.ntlm.timestamp = server_time(token)
        return await self.ntlm.authenticate(token, flags=kwargs.get("flags"), spn=kwargs.get("spn"))

    def get_internal_seq(self) -> int:
        return 0  # no SPNEGO mechListMIC was signed: CredSSP's own messages start at 0

    def get_active_credential(self) -> Any:
        return self.ntlm.credential

    def get_extra_info(self) -> Any:
        return self.ntlm.get_extra_info()

    async def encrypt(self, data: bytes, seq: int) -> Any:
        return await self.ntlm.encrypt(data, seq)

    async def decrypt(self, data: bytes, seq: int) -> Any:
        return await self.ntlm.decrypt(data, seq)


def server_time(challenge: bytes) -> bytes | None:
    """The server's time (``MsvAvTimestamp``, 8 bytes) in an NTLM challenge: the
    client's NTLMv2 response should carry it (MS-NLMP 3.1.5.1.2), and FreeRDP's server
    checks the response against it; asyauth would put its own clock there."""
    try:
        info = NTLMChallenge.from_bytes(challenge).TargetInfo
    except (ValueError, IndexError, KeyError, struct.error):
        return None
    stamp = None if info is None else info.get(AVPAIRType.MsvAvTimestamp)
    return stamp if isinstance(stamp, bytes) and len(stamp) == 8 else None


_original_datetime2timestamp = _ntlm_response.datetime2timestamp


def _timestamp(value: Any) -> bytes:
    """asyauth's NTLMv2 timestamp: the server's 8 bytes as they came, else its own."""
    if isinstance(value, bytes):
        return value
    return _original_datetime2timestamp(value)  # type: ignore[no-any-return]


_ntlm_response.datetime2timestamp = _timestamp


def credssp_context(credential: UniCredential) -> Any:
    """asyauth's CredSSP client over raw NTLM with the stored user and password."""
    ctx = CredSSPClientNative(CREDSSPCredential([credential]))
    ctx.auth_ctx = _RawNtlm(credential.build_context(asyauthProtocol.NTLM))
    return ctx


def credssp_status(err: BaseException) -> int | None:
    """The NTSTATUS a CredSSP server sent (``TSRequest.errorCode``), as asyauth's error
    names it; None when it sent none."""
    text = str(err)
    if "Code: 0x" not in text:
        return None
    with contextlib.suppress(ValueError, IndexError):
        return int(text.split("Code: 0x", 1)[1].split()[0], 16)
    return None


def login_refused(err: BaseException, authapi: Any) -> bool:
    """Whether a failed CredSSP exchange is the server refusing the login: a logon
    NTSTATUS, or the connection closed once the NTLM response was sent (FreeRDP's
    server closes without a word)."""
    status = credssp_status(err)
    if status is not None:
        return status in LOGON_REFUSED_STATUS
    ntlm = getattr(getattr(authapi, "auth_ctx", None), "ntlm", None)
    answered = getattr(ntlm, "ntlmAuthenticate", None) is not None
    return answered and "Connection closed during CredSSP" in str(err)


__all__ = [
    "ASYAUTH_VERSION",
    "LOGON_REFUSED_STATUS",
    "credssp_context",
    "credssp_status",
    "login_refused",
    "server_time",
]
