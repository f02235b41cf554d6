"""What many tests need and nothing in the product provides: waiting for a condition
(``poll``, ``poll_sync``), a clock moved by hand (``FakeClock``), a loopback port nobody
listens on (``free_port``), whether one is listened on (``listening``) and a connection
to a port about to listen (``connect_when_listening``). One definition each; tests
import them from here."""

from tests.support.clock import FakeClock
from tests.support.net import connect_when_listening, free_port, listening
from tests.support.polling import poll, poll_sync

__all__ = ["FakeClock", "connect_when_listening", "free_port", "listening", "poll", "poll_sync"]
