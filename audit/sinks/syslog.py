"""syslog: RFC 5424 messages over TCP (RFC 6587 octet counting), TLS optional (RFC 5425).

Each event becomes one message::

    <PRI>1 TIMESTAMP HOSTNAME hoshu - EVENTTYPE [hoshu@PEN uid="..." seq="..."] BOM{json}

TCP syslog has no application acknowledgement, so a batch is sent on its own
connection which is then half-closed (over TLS: after a close_notify); the
batch counts as delivered only when the receiver (rsyslog, syslog-ng) closes
its side in turn, which it does after reading everything we sent.  A reset
means unread data: not delivered.  A reset or timeout means "not delivered" and the
batch is retried: at least once, de-duplicated on ``uid``.
"""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Mapping, Sequence
from typing import Any

from audit.outbox import SinkError

_SEVERITY = {"Informational": 6, "Low": 5, "Medium": 4, "High": 2}
FACILITY_LOCAL0 = 16


def _sd_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _printable(value: str, limit: int) -> str:
    cleaned = "".join(c if 33 <= ord(c) <= 126 else "_" for c in value)[:limit]
    return cleaned or "-"


def format_message(
    record: Mapping[str, Any],
    *,
    hostname: str,
    facility: int = FACILITY_LOCAL0,
    enterprise_id: int = 32473,
) -> bytes:
    """One RFC 5424 message (without framing) for ``record``."""
    pri = facility * 8 + _SEVERITY.get(str(record.get("EventSeverity")), 6)
    sd = (
        f'[hoshu@{enterprise_id} uid="{_sd_escape(str(record.get("EventUid", "")))}" '
        f'seq="{_sd_escape(str(record.get("ChainSeq", "")))}"]'
    )
    header = (
        f"<{pri}>1 {_printable(str(record.get('TimeGenerated', '-')), 64)} "
        f"{_printable(hostname, 255)} hoshu - "
        f"{_printable(str(record.get('EventType', '-')), 32)} {sd} "
    )
    body = json.dumps(record, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return header.encode() + b"\xef\xbb\xbf" + body.encode()


def frame(message: bytes) -> bytes:
    return str(len(message)).encode() + b" " + message


class SyslogSink:
    """Sends batches of RFC 5424 messages to a TCP (or TLS) syslog receiver."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        hostname: str = "hoshu-broker",
        name: str = "syslog",
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        timeout_s: float = 10.0,
        max_message: int = 64 * 1024,
    ) -> None:
        self.name = name
        self.host, self.port, self.hostname = host, port, hostname
        self.tls, self.server_hostname = tls, server_hostname or host
        self.timeout_s = timeout_s
        self.max_message = max_message

    def send(self, records: Sequence[Mapping[str, Any]]) -> None:
        data = bytearray()
        for r in records:
            msg = format_message(r, hostname=self.hostname)
            if len(msg) > self.max_message:
                slim = {k: v for k, v in r.items() if k != "Details"}
                slim["EventResultDetails"] = "details omitted: message too large for syslog"
                msg = format_message(slim, hostname=self.hostname)
            data += frame(msg)
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
        except OSError as exc:
            raise SinkError(f"syslog {self.host}:{self.port} unreachable: {exc}") from exc
        try:
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_hostname=self.server_hostname)
            sock.settimeout(self.timeout_s)
            sock.sendall(bytes(data))
            if isinstance(sock, ssl.SSLSocket):
                try:
                    sock = sock.unwrap()  # close_notify, then the TCP half-close below
                except ssl.SSLEOFError:
                    # the receiver read up to our close_notify and closed (rsyslog's gtls
                    # does not answer it): everything before it was read
                    return
            sock.shutdown(socket.SHUT_WR)
            extra = 0
            while chunk := sock.recv(4096):  # the receiver sends nothing; EOF means "all read"
                extra += len(chunk)
                if extra > 64 * 1024:
                    raise OSError("syslog receiver keeps talking instead of closing")
        except (OSError, ssl.SSLError) as exc:
            raise SinkError(f"syslog did not take the batch: {exc}") from exc
        finally:
            sock.close()

    def close(self) -> None:
        return None
