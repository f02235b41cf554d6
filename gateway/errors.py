"""Errors of the gateway: one tree, every class under :class:`GatewayError`.

Error tree::

    GatewayError
    ├── ConfigError        the configuration file is missing, unreadable or invalid
    ├── NotEnrolled        no gateway key or no pinned broker key yet
    ├── EnrollmentError    the broker refused the enrolment, or its answer is untrustworthy
    └── ControlError       the local control socket could not be reached

``hoshu-gateway`` (:mod:`gateway.cli`) prints any of these as one line and exits 2
(``ConfigError``, ``NotEnrolled``: fix the set-up) or 1.  Outside the tree:
:class:`gateway.agent.IllegalAgentTransition` (``RuntimeError``), a bug in the dial-out
loop, never a network condition (those are the agent's states).  A refused instrument
connection is answered on the tunnel as asyncssh's ``ChannelOpenError`` (the SSH reason
code is the contract); a bad control message (:mod:`wire.errors`) is logged, counted
and answered with an ``error`` message.
"""


class GatewayError(Exception):
    """Base of every gateway error."""


class ConfigError(GatewayError):
    """The configuration file is missing, unreadable or invalid."""


class NotEnrolled(GatewayError):
    """The gateway has no key or no pinned broker key yet: run ``hoshu-gateway enroll``."""


class EnrollmentError(GatewayError):
    """The broker refused the enrolment, or its answer could not be trusted."""


class ControlError(GatewayError):
    """The local control socket could not be reached or answered badly."""
