"""Errors of the gateway (tree drawn in ``gateway/__init__.py``)."""


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
