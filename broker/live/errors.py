"""Errors of live sessions and their recordings.

A branch of :class:`broker.access.errors.SessionError` (recorded or refused:
a session whose recording cannot be written ends)::

    SessionError
    └── RecordingError      the session recording cannot be written (fail closed)
        ├── RecordingLimit  the recording reached its size limit (the session ends)
        └── CaptureFailed   (broker.frontdoor.forward) a forward's byte capture
                            cannot be written
"""

from __future__ import annotations

from broker.access.errors import SessionError


class RecordingError(SessionError):
    reason = "recording_failed"


class RecordingLimit(RecordingError):
    reason = "recording_limit"
