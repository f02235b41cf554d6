"""Fluentd forward protocol client with acknowledgements (``chunk`` / ``ack``).

fluent-logger's sender writes and forgets; losing a batch when Fluentd closes
the connection mid-write is exactly what the outbox must not do.  This client
speaks the Forward mode of the protocol (v1): one message
``[tag, [[time, record], ...], {"chunk": <id>, "size": n}]`` per batch, then
waits (with a timeout) for ``{"ack": <id>}``.  Only that reply acknowledges the
batch.  TLS is optional (Fluentd ``<transport tls>``).  Event times are
fluent-logger's ``EventTime`` (nanosecond precision); fluent-logger's own
sender is not used because it cannot wait for acknowledgements.
"""

from __future__ import annotations

import base64
import os
import socket
import ssl
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import msgpack
from fluent.sender import EventTime

from audit.outbox import SinkError

MAX_REPLY = 4096


def _event_time(value: Any) -> Any:
    """The event's time as Fluentd's EventTime (seconds and nanoseconds)."""
    try:
        t = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return 0
    return EventTime(int(t.timestamp()), nanoseconds=t.microsecond * 1000)


class FluentForwardSink:
    """Ships batches to a Fluentd ``<source> @type forward`` and waits for the ack."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tag: str = "hoshu.audit",
        name: str = "fluentd",
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self.name = name
        self.host, self.port, self.tag = host, port, tag
        self.tls, self.server_hostname = tls, server_hostname or host
        self.timeout_s = timeout_s
        self._sock: socket.socket | None = None

    def _connect(self) -> socket.socket:
        if self._sock is None:
            try:
                sock = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
                if self.tls is not None:
                    sock = self.tls.wrap_socket(sock, server_hostname=self.server_hostname)
            except (OSError, ssl.SSLError) as exc:
                raise SinkError(f"fluentd {self.host}:{self.port} unreachable: {exc}") from exc
            sock.settimeout(self.timeout_s)
            self._sock = sock
        return self._sock

    def send(self, records: Sequence[Mapping[str, Any]]) -> None:
        chunk = base64.b64encode(os.urandom(16)).decode()
        entries = [[_event_time(r.get("TimeGenerated")), dict(r)] for r in records]
        payload = msgpack.packb(
            [self.tag, entries, {"chunk": chunk, "size": len(entries)}], use_bin_type=True
        )
        sock = self._connect()
        try:
            sock.sendall(payload)
            reply = self._read_reply(sock)
        except (OSError, ssl.SSLError, ValueError) as exc:
            self.close()
            raise SinkError(f"fluentd did not acknowledge the batch: {exc}") from exc
        if not isinstance(reply, dict) or reply.get("ack") != chunk:
            self.close()
            raise SinkError(f"fluentd answered {reply!r} instead of the ack for {chunk}")

    @staticmethod
    def _read_reply(sock: socket.socket) -> Any:
        unpacker = msgpack.Unpacker(raw=False, max_buffer_size=MAX_REPLY)
        received = 0
        while True:
            data = sock.recv(MAX_REPLY)
            if not data:
                raise ValueError("connection closed before the ack")
            received += len(data)
            if received > MAX_REPLY:
                raise ValueError("ack reply too large")
            unpacker.feed(data)
            for obj in unpacker:
                return obj

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None
