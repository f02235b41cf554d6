"""The kill switch: persisted pause state and the local control socket.

``hoshu-gateway pause|resume|status`` talk to the running gateway over a unix
socket in the state directory (mode 0600: only the gateway's own user, and
root, may use it; it is never a TCP port).  The pause state is also written
to ``state.json`` so a restarted gateway stays paused.  A state file that
cannot be read keeps the gateway paused (fail closed) until ``resume``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import struct
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from gateway.errors import ControlError

MAX_CONTROL_BYTES = 64 * 1024
CONTROL_TIMEOUT_S = 5.0
COMMANDS = frozenset({"pause", "resume", "status"})


@dataclass(frozen=True, slots=True)
class PauseState:
    paused: bool
    since: str | None = None  # ISO time the switch was pulled
    by: str | None = None
    error: str | None = None  # set when the file could not be read (kept paused)
    pending: str | None = None  # "paused"/"resumed" written without the gateway running:
    #                              the gateway records the audit event when it sees it


def read_state(path: Path) -> PauseState:
    """The persisted kill-switch state; unreadable or corrupted means paused."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return PauseState(False)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return PauseState(
            True, error=f"{path} is unreadable ({type(exc).__name__}): staying paused until resumed"
        )
    if not isinstance(raw, dict) or not isinstance(raw.get("paused"), bool):
        return PauseState(True, error=f"{path} is not a pause state: staying paused")
    since, by, pending = raw.get("since"), raw.get("by"), raw.get("pending")
    return PauseState(
        raw["paused"],
        since if isinstance(since, str) else None,
        by if isinstance(by, str) else None,
        pending=pending if pending in ("paused", "resumed") else None,
    )


def write_state(path: Path, state: PauseState) -> None:
    """Persist atomically (write, fsync, rename)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(
            {
                "paused": state.paused,
                "since": state.since,
                "by": state.by,
                "pending": state.pending,
            },
            f,
        )
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def state_now(paused: bool, by: str, now: datetime, *, pending: bool = False) -> PauseState:
    return PauseState(
        paused,
        now.isoformat() if paused else None,
        by,
        pending=("paused" if paused else "resumed") if pending else None,
    )


Handler = Callable[[str, str], Awaitable[dict[str, Any]]]


class ControlServer:
    """Serves ``{"cmd": "pause"|"resume"|"status", "by": str}`` lines on a unix socket."""

    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self._handler = handler
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        old = os.umask(0o177)  # the socket is born 0600
        try:
            self._server = await asyncio.start_unix_server(
                self._serve, path=str(self.path), limit=MAX_CONTROL_BYTES
            )
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                line = await asyncio.wait_for(reader.readline(), CONTROL_TIMEOUT_S)
                req = json.loads(line)
                if not isinstance(req, dict) or req.get("cmd") not in COMMANDS:
                    raise ValueError("unknown command")
                by = req.get("by")
                by = by[:64] if isinstance(by, str) and by.isprintable() and by else "local"
                uid = _peer_uid(writer)
                if uid is not None:  # the claimed name, and the account that really asked
                    by = f"{by} (uid {uid})"
                answer = await self._handler(str(req["cmd"]), by)
            except (ValueError, TimeoutError, asyncio.LimitOverrunError) as exc:
                answer = {"ok": False, "error": f"bad control request: {exc}"}
            writer.write(json.dumps(answer, default=str).encode() + b"\n")
            await asyncio.wait_for(writer.drain(), CONTROL_TIMEOUT_S)
        except (OSError, TimeoutError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _peer_uid(writer: asyncio.StreamWriter) -> int | None:
    sock = writer.get_extra_info("socket")
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return None
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    return int(struct.unpack("3i", creds)[1])


def request(path: Path, cmd: str, by: str, *, timeout: float = CONTROL_TIMEOUT_S) -> dict[str, Any]:
    """Send one command to the running gateway; raises ControlError if none answers."""
    if not hasattr(socket, "AF_UNIX") or sys.platform == "win32":
        raise ControlError("no control socket on this platform")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(path))
            s.sendall(json.dumps({"cmd": cmd, "by": by}).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n") and len(buf) <= MAX_CONTROL_BYTES:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise ControlError("the gateway is not running") from exc
    except OSError as exc:
        raise ControlError(f"cannot talk to the gateway: {exc}") from exc
    try:
        answer = json.loads(buf)
    except ValueError as exc:
        raise ControlError("the gateway answered with something unreadable") from exc
    if not isinstance(answer, dict):
        raise ControlError("the gateway answered with something unreadable")
    return answer
