"""Errors of the route to an instrument (gateway tunnels).

A branch of :class:`broker.access.errors.SessionError`, raised by the
connectors (:mod:`broker.tunnel.connector`), which translate every ``OSError``
and asyncssh error into one of these, once::

    SessionError
    ├── GatewayOffline      no tunnel to the instrument's hospital gateway
    └── InstrumentError     the instrument or its gateway refused or failed
        │                   (credential, host key, network)
        └── PortUnreachable a forwarded port cannot be reached

Outside that tree, caught where it is raised::

    Exception
    └── ProtocolFailure     (broker.tunnel.link) a gateway broke the control protocol:
                            its connection is closed
"""

from __future__ import annotations

from broker.access.errors import SessionError


class GatewayOffline(SessionError):
    reason = "gateway_offline"


class InstrumentError(SessionError):
    reason = "instrument_error"


class PortUnreachable(InstrumentError):
    reason = "connect_failed"
