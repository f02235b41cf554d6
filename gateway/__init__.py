"""hoshu-gateway: the hospital-side, outbound-only connector.

The gateway dials out to the broker and runs the SSH *server* side of a
reverse SSH connection.  It opens a TCP connection to an instrument only when
the broker asks for a host and port on the hospital's own allowlist, and only
while not paused (and, in window-only mode, only inside an approved window).

Error tree::

    GatewayError
    ├── ConfigError        the configuration file is missing, unreadable or invalid
    ├── NotEnrolled        no gateway key or no pinned broker key yet
    ├── EnrollmentError    the broker refused the enrolment, or its answer is untrustworthy
    └── ControlError       the local control socket could not be reached
"""

__version__ = "0.1.0"
