"""The RDP drive of one desktop session, as the desktop gate runs it.

:class:`~broker.desktop.session.DesktopGate` makes a session's drive
(:class:`~broker.desktop.rdpdrive.DriveDir`, under the broker's drives directory)
only when the hospital's policy allows the drive (``drive_allowed``, read once when
the session opens) and the instrument is an RDP one; the drive is removed, with
every file in it, when the session ends.  :func:`follow` turns the drive's events
into the audit log and the recording:

- a file that crossed is ``file.transferred`` (tool ``drive``; direction
  ``Outbound`` for one the instrument wrote, ``Inbound`` for one put in from the
  broker's side; its name, size and SHA-256) and a ``D`` record in the desktop
  recording (the same fields as JSON);
- a refusal (a malformed or too large PDU, a name that is not taken, the drive
  full, a file the scan hook rejected) is ``file.refused`` naming why.

Files going into the hospital pass :func:`scan_file` (the front door's scan hook:
its argv and the file's path; exit 0 is clean, anything else, or no answer within
the timeout, rejects) before they appear on the drive.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from broker.desktop.rdpdrive import DriveDir, DriveFile

log = logging.getLogger(__name__)


async def scan_file(argv: tuple[str, ...], timeout_s: float, path: Path) -> bool:
    """The scan hook's verdict on ``path``: True clean; no hook: True."""
    if not argv:
        return True
    proc = await asyncio.create_subprocess_exec(
        *argv,
        str(path),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        rc = await asyncio.wait_for(proc.wait(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return False
    return rc == 0


async def follow(
    drive: DriveDir,
    emit: Callable[..., None],
    cols: dict[str, Any],
    record: Callable[[bytes, bytes], None],
) -> None:
    """Log and record each event of ``drive`` until cancelled (or its end, None)."""
    while (event := await drive.events.get()) is not None:
        fields = dict(
            cols,
            NetworkDirection=event.direction,
            TargetFileName=event.name,
            TargetFileSize=event.size,
            TargetFileSHA256=event.sha256,
        )
        if isinstance(event, DriveFile):
            op = "upload" if event.direction == "Inbound" else "download"
            marker = {
                "direction": event.direction,
                "name": event.name,
                "size": event.size,
                "sha256": event.sha256,
            }
            record(b"D", json.dumps(marker, ensure_ascii=False).encode())
            emit("file.transferred", details={"tool": "drive", "operation": op}, **fields)
        else:
            emit(
                "file.refused",
                EventResult="Failure",
                EventResultDetails=event.reason,
                EventMessage=event.message,
                details={
                    "tool": "drive",
                    "operation": "upload" if event.direction == "Inbound" else "download",
                },
                **fields,
            )


__all__ = ["follow", "scan_file"]
