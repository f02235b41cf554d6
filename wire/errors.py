"""Errors of the wire contract (tree drawn in ``wire/__init__.py``)."""


class WireError(Exception):
    """Base of every wire error: the message was not accepted; nothing changed."""


class MessageTooLarge(WireError):
    """A control line exceeded :data:`wire.names.MAX_MESSAGE_BYTES`."""


class MalformedMessage(WireError):
    """Not JSON, not an object, or fields that do not validate."""


class UnknownMessageType(WireError):
    """A well-formed message of a type this side does not know (newer peer): ignore it."""
