"""Errors raised by the simulated laboratory.

One tree, so callers can catch everything the lab raises with one clause::

    LabsimError
    ├── InstrumentStartError   an instrument did not come up (port, binary, config)
    └── ProtocolError          a peer sent something the simulated protocol refuses
"""

from __future__ import annotations


class LabsimError(Exception):
    """Base class of every error the simulated laboratory raises."""


class InstrumentStartError(LabsimError):
    """An instrument could not be started or did not become ready in time."""


class ProtocolError(LabsimError):
    """A peer broke the simulated protocol (bad framing, oversized input, timeout)."""
