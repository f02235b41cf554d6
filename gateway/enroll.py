"""Enrolment: register this gateway's key with the broker and pin the broker's key.

The token (``hoshu-enroll-v1.<token_id>.<secret>.<fp>``) carries ``fp``, the
base64url SHA-256 of the broker's tunnel host key.  The gateway

1. generates its Ed25519 key locally (``state_dir/gateway_key``, mode 0600;
   the private key never leaves the machine),
2. ``POST {api}/v1/gateways/enroll`` with the token and its public key,
3. refuses the answer unless SHA-256 of ``broker_host_key`` equals ``fp``,
4. writes ``state_dir/enrollment.json`` (mode 0600) with the pinned key.

401 (forged or unknown token) and 410 (used or expired) become an
:class:`EnrollmentError` with the broker's message; nothing is written.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import asyncssh
import httpx

from audit.keyfiles import create_secret, replace_secret
from gateway.config import GatewayConfig
from gateway.errors import EnrollmentError, NotEnrolled

TOKEN_PREFIX = "hoshu-enroll-v1"  # noqa: S105  (a format name, not a secret)
MAX_ANSWER_BYTES = 64 * 1024
_TOKEN_RE = re.compile(
    r"hoshu-enroll-v1\.([A-Za-z0-9_-]{1,64})\.([A-Za-z0-9_-]{16,128})"
    r"\.([A-Za-z0-9_-]{43})"
)


@dataclass(frozen=True, slots=True)
class EnrollToken:
    token_id: str
    secret: str
    fingerprint: str  # base64url, no padding, of SHA-256 over the broker host key blob


@dataclass(frozen=True, slots=True)
class Enrollment:
    gateway_id: str
    hospital_id: str
    hospital: str
    broker_host_key: str  # OpenSSH public key line, pinned
    tunnel_host: str
    tunnel_port: int
    protocol_version: int


def parse_token(text: str) -> EnrollToken:
    m = _TOKEN_RE.fullmatch(text.strip())
    if m is None:
        raise EnrollmentError(
            "that is not a hoshu enrolment token "
            "(expected hoshu-enroll-v1.<id>.<secret>.<fingerprint>)"
        )
    return EnrollToken(m.group(1), m.group(2), m.group(3))


def key_fingerprint_b64(openssh_public_key: str) -> str:
    """base64url (no padding) SHA-256 of the key blob, as in the token."""
    key = asyncssh.import_public_key(openssh_public_key)
    digest = hashlib.sha256(key.public_data).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def _write_private(path: Path, data: bytes) -> None:
    """Write ``path`` atomically, born 0600 (a fresh random temporary file, renamed)."""
    replace_secret(path, data)


def load_or_create_key(path: Path) -> asyncssh.SSHKey:
    """The gateway's private key; created (Ed25519, 0600) on first use."""
    if path.exists():
        try:
            return asyncssh.read_private_key(path)
        except (OSError, asyncssh.KeyImportError) as exc:
            raise EnrollmentError(f"{path}: cannot read the gateway key: {exc}") from exc
    key = asyncssh.generate_private_key("ssh-ed25519")
    try:
        create_secret(path, key.export_private_key())  # a file planted meanwhile is refused
    except FileExistsError as exc:
        raise EnrollmentError(f"{path} appeared while the gateway key was created") from exc
    _write_private(path.with_name(path.name + ".pub"), key.export_public_key())
    return key


def load_enrollment(config: GatewayConfig) -> tuple[Enrollment, asyncssh.SSHKey]:
    """The stored enrolment and the gateway key; NotEnrolled if either is missing."""
    try:
        raw = json.loads(config.enrollment_path.read_text(encoding="utf-8"))
        enrollment = Enrollment(**raw)
        asyncssh.import_public_key(enrollment.broker_host_key)
    except FileNotFoundError as exc:
        raise NotEnrolled("this gateway is not enrolled: run `hoshu-gateway enroll`") from exc
    except (OSError, ValueError, TypeError, asyncssh.KeyImportError) as exc:
        raise NotEnrolled(f"{config.enrollment_path} is damaged ({exc}); enrol again") from exc
    if not config.key_path.exists():
        raise NotEnrolled(f"{config.key_path} is missing; enrol again")
    try:
        key = asyncssh.read_private_key(config.key_path)
    except (OSError, asyncssh.KeyImportError) as exc:
        raise NotEnrolled(f"{config.key_path}: cannot read the gateway key: {exc}") from exc
    return enrollment, key


def _error_text(resp: httpx.Response, body: bytes) -> str:
    try:
        err = json.loads(body)["error"]
        return f"{err['code']}: {err['message']}"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {resp.status_code}"


def _validated(answer: Any) -> Enrollment:
    if not isinstance(answer, dict):
        raise EnrollmentError("the broker's answer is not a JSON object")
    try:
        e = Enrollment(
            gateway_id=str(answer["gateway_id"]),
            hospital_id=str(answer["hospital_id"]),
            hospital=str(answer["hospital"]),
            broker_host_key=str(answer["broker_host_key"]),
            tunnel_host=str(answer["tunnel_host"]),
            tunnel_port=int(answer["tunnel_port"]),
            protocol_version=int(answer["protocol_version"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise EnrollmentError(f"the broker's answer lacks a field: {exc}") from exc
    if not 1 <= e.tunnel_port <= 65535 or not e.tunnel_host:
        raise EnrollmentError("the broker's answer names no usable tunnel address")
    return e


def enroll(
    config: GatewayConfig,
    token_text: str,
    *,
    version: str,
    client: httpx.Client | None = None,
    timeout: float = 15.0,
) -> Enrollment:
    """Enrol with the broker at ``config.api``; see the module docstring."""
    token = parse_token(token_text)
    if config.enrollment_path.exists():
        raise EnrollmentError(
            f"already enrolled ({config.enrollment_path} exists); "
            "remove the state directory to enrol again"
        )
    if not config.api:
        raise EnrollmentError("no broker API URL: set [broker] api in the configuration")
    key = load_or_create_key(config.key_path)
    body = {
        "token": token_text.strip(),
        "public_key": key.export_public_key().decode().strip(),
        "name": config.name,
        "version": version,
    }
    url = config.api.rstrip("/") + "/v1/gateways/enroll"
    http = client or httpx.Client(timeout=timeout)
    try:
        with http.stream("POST", url, json=body, timeout=timeout) as resp:
            data = b""
            for chunk in resp.iter_bytes():
                data += chunk
                if len(data) > MAX_ANSWER_BYTES:
                    raise EnrollmentError("the broker's answer is too large")
    except httpx.HTTPError as exc:
        raise EnrollmentError(f"cannot reach the broker at {url}: {exc}") from exc
    finally:
        if client is None:
            http.close()
    if resp.status_code == 401:
        raise EnrollmentError(
            f"enrolment refused: the token is not valid ({_error_text(resp, data)})"
        )
    if resp.status_code == 410:
        raise EnrollmentError(
            "enrolment refused: the token was already used or has expired "
            f"({_error_text(resp, data)})"
        )
    if resp.status_code != 201:
        raise EnrollmentError(f"enrolment failed: {_error_text(resp, data)}")
    try:
        enrollment = _validated(json.loads(data))
        actual = key_fingerprint_b64(enrollment.broker_host_key)
    except (ValueError, asyncssh.KeyImportError) as exc:
        raise EnrollmentError(f"the broker's answer is not usable: {exc}") from exc
    if not hmac.compare_digest(actual, token.fingerprint):
        raise EnrollmentError(
            "the broker's key does not match the fingerprint in the token: "
            "refusing to pin it (wrong broker, or the answer was tampered with)"
        )
    _write_private(config.enrollment_path, json.dumps(asdict(enrollment), indent=1).encode())
    return enrollment
