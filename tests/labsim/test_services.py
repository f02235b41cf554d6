"""The TCP maintenance ports: HL7/MLLP, RFB, ASTM and echo, with their limits."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import pytest

from labsim import AstmService, BackgroundLoop, EchoService, Hl7Service, RfbService
from labsim.services.astm import frame
from labsim.services.base import TcpService

TIMEOUT_S = 10.0
ORU = (
    "MSH|^~\\&|cobas|LAB|LIS|HOSP|20261124101500||ORU^R01^ORU_R01|MSG00042|P|2.5.1\r"
    "OBR|1||S00017|GLU\r"
    "OBX|1|NM|GLU^Glucose||98|mg/dL|70-110|N|||F\r"
)


def _connect(service: TcpService) -> socket.socket:
    sock = socket.create_connection((service.host, service.port), timeout=TIMEOUT_S)
    sock.settimeout(TIMEOUT_S)
    return sock


def _recv_until(sock: socket.socket, marker: bytes, limit: int = 1 << 20) -> bytes:
    buf = b""
    while marker not in buf:
        data = sock.recv(65536)
        if not data:
            raise AssertionError(f"closed before {marker!r}; got {buf!r}")
        buf += data
        assert len(buf) < limit
    return buf


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        data = sock.recv(n - len(buf))
        if not data:
            raise AssertionError(f"closed after {len(buf)} of {n} bytes")
        buf += data
    return buf


def _assert_closed(sock: socket.socket) -> None:
    """The peer hangs up within the socket timeout (a timeout fails the test)."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass


def _segments(frame_bytes: bytes) -> list[list[str]]:
    body = frame_bytes.strip(b"\x0b\x1c\r").decode()
    return [seg.split("|") for seg in body.split("\r") if seg]


@pytest.fixture
def started(labsim_loop: BackgroundLoop) -> Iterator[list[TcpService]]:
    """Collects services a test starts and closes them afterwards."""
    services: list[TcpService] = []
    yield services
    for service in services:
        labsim_loop.run(service.close())


def _start(loop: BackgroundLoop, started: list[TcpService], service: TcpService) -> TcpService:
    loop.run(service.start())
    started.append(service)
    return service


# -- HL7 / MLLP ------------------------------------------------------------------------


def test_hl7_message_is_acknowledged_with_aa(hl7_service: Hl7Service) -> None:
    """A framed ORU^R01 gets an ACK whose MSA says AA and echoes the control id."""
    with _connect(hl7_service) as sock:
        sock.sendall(b"\x0b" + ORU.encode() + b"\x1c\r")
        ack = _segments(_recv_until(sock, b"\x1c\r"))
    assert ack[0][0] == "MSH"
    assert ack[0][8] == "ACK^R01^ACK"
    assert ack[0][2:4] == ["LIS", "HOSP"]  # the ACK comes from the receiver
    assert ack[1][:3] == ["MSA", "AA", "MSG00042"]
    assert list(hl7_service.received) == [ORU]


def test_hl7_two_messages_on_one_connection(hl7_service: Hl7Service) -> None:
    """Several frames on one connection (even in one packet) each get their ACK."""
    second = ORU.replace("MSG00042", "MSG00043")
    with _connect(hl7_service) as sock:
        sock.sendall(b"\x0b" + ORU.encode() + b"\x1c\r\x0b" + second.encode() + b"\x1c\r")
        data = _recv_until(sock, b"MSG00043")
    assert data.count(b"MSA|AA|") == 2


def test_hl7_non_hl7_payload_is_rejected_with_ar(hl7_service: Hl7Service) -> None:
    """A frame that is not an HL7 message is answered MSA|AR and not stored."""
    with _connect(hl7_service) as sock:
        sock.sendall(b"\x0bhello analyzer\x1c\r")
        ack = _segments(_recv_until(sock, b"\x1c\r"))
    assert ack[1][1] == "AR"
    assert not hl7_service.received


def test_hl7_oversized_frame_is_rejected_and_connection_closed(
    labsim_loop: BackgroundLoop, started: list[TcpService]
) -> None:
    """A frame over the size limit gets MSA|AR with a reason, then the port hangs up."""
    service = _start(labsim_loop, started, Hl7Service(max_message_bytes=1024))
    assert isinstance(service, Hl7Service)
    with _connect(service) as sock:
        big = ORU + "NTE|1||" + "x" * 5000 + "\r"
        try:
            sock.sendall(b"\x0b" + big.encode() + b"\x1c\r")
        except (BrokenPipeError, ConnectionResetError):
            pass
        ack = _segments(_recv_until(sock, b"\x1c\r"))
        assert ack[1][:3] == ["MSA", "AR", "MSG00042"]
        assert "exceeds 1024 bytes" in "|".join(ack[2])
        _assert_closed(sock)
    assert not service.received
    assert service.rejected == 1


def test_hl7_stalled_sender_is_disconnected(
    labsim_loop: BackgroundLoop, started: list[TcpService]
) -> None:
    """A half-sent frame is dropped after the read timeout; nothing is stored."""
    service = _start(labsim_loop, started, Hl7Service(read_timeout_s=0.3))
    assert isinstance(service, Hl7Service)
    with _connect(service) as sock:
        sock.sendall(b"\x0bMSH|^~\\&|half")
        assert sock.recv(100) == b""
    assert not service.received


# -- RFB -----------------------------------------------------------------------------


def test_rfb_handshake_reaches_server_init(
    labsim_loop: BackgroundLoop, started: list[TcpService]
) -> None:
    """A VNC viewer's RFB 3.8 handshake ends in ServerInit with size and desktop name."""
    service = _start(labsim_loop, started, RfbService())
    with _connect(service) as sock:
        assert _recv_exact(sock, 12) == b"RFB 003.008\n"
        sock.sendall(b"RFB 003.008\n")
        assert _recv_exact(sock, 2) == b"\x01\x01"  # one type: None
        sock.sendall(b"\x01")
        assert _recv_exact(sock, 4) == b"\x00\x00\x00\x00"
        sock.sendall(b"\x01")  # shared
        width, height = struct.unpack(">HH", _recv_exact(sock, 4))
        pixel_format = _recv_exact(sock, 16)
        (name_len,) = struct.unpack(">I", _recv_exact(sock, 4))
        name = _recv_exact(sock, name_len).decode()
        assert (width, height, pixel_format[0]) == (1024, 768, 32)
        assert name == "xn-1000-1 service screen"
        sock.sendall(struct.pack(">BxHi", 2, 1, 2))  # SetEncodings: RRE
        sock.sendall(struct.pack(">BBHHHH", 3, 0, 0, 0, width, height))
        update = _recv_exact(sock, 4 + 12 + 4 + 4)
        assert struct.unpack(">BxH", update[:4]) == (0, 1)
        sock.sendall(struct.pack(">BBxxI", 4, 1, 0xFF0D))  # KeyEvent: Return
    assert service.info.protocol == "rfb"


def test_rfb_unknown_version_is_dropped(
    labsim_loop: BackgroundLoop, started: list[TcpService]
) -> None:
    service = _start(labsim_loop, started, RfbService())
    with _connect(service) as sock:
        _recv_exact(sock, 12)
        sock.sendall(b"HTTP/1.1 GET")
        _assert_closed(sock)


# -- ASTM ----------------------------------------------------------------------------


def test_astm_transfer_is_acked_frame_by_frame(
    labsim_loop: BackgroundLoop, started: list[TcpService]
) -> None:
    """ENQ, checksummed frames and EOT deliver the records; a bad checksum gets NAK."""
    service = _start(labsim_loop, started, AstmService())
    assert isinstance(service, AstmService)
    with _connect(service) as sock:
        sock.sendall(b"\x05")
        assert _recv_exact(sock, 1) == b"\x06"
        sock.sendall(frame(1, "H|\\^&|||cobas^c503\rP|1\r"))
        assert _recv_exact(sock, 1) == b"\x06"
        bad = bytearray(frame(2, "R|1|^^^GLU|98|mg/dL\r"))
        bad[-4:-2] = b"00"
        sock.sendall(bytes(bad))
        assert _recv_exact(sock, 1) == b"\x15"
        sock.sendall(frame(2, "R|1|^^^GLU|98|mg/dL\rL|1|N\r"))
        assert _recv_exact(sock, 1) == b"\x06"
        sock.sendall(b"\x04")
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(10) == b""
    assert list(service.received) == [
        ["H|\\^&|||cobas^c503", "P|1", "R|1|^^^GLU|98|mg/dL", "L|1|N"]
    ]
    assert service.naks == 1


# -- echo ----------------------------------------------------------------------------


def test_echo_port_returns_every_byte(
    labsim_loop: BackgroundLoop, started: list[TcpService]
) -> None:
    service = _start(labsim_loop, started, EchoService())
    payload = bytes(range(256)) * 1024
    with _connect(service) as sock:
        sock.sendall(payload)
        assert _recv_exact(sock, len(payload)) == payload


def test_sink_port_counts_and_discards(
    labsim_loop: BackgroundLoop, started: list[TcpService]
) -> None:
    service = _start(labsim_loop, started, EchoService(mode="sink"))
    assert isinstance(service, EchoService)
    with _connect(service) as sock:
        sock.sendall(b"x" * 100_000)
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(10) == b""
    assert service.bytes_received == 100_000


def test_rfb_37_client_gets_no_security_result_for_none(
    labsim_loop: BackgroundLoop, started: list[TcpService]
) -> None:
    """RFB 3.7 sends SecurityResult only for authenticating types: ServerInit follows."""
    service = _start(labsim_loop, started, RfbService(width=640, height=480))
    with _connect(service) as sock:
        _recv_exact(sock, 12)
        sock.sendall(b"RFB 003.007\n")
        assert _recv_exact(sock, 2) == b"\x01\x01"
        sock.sendall(b"\x01")
        sock.sendall(b"\x00")  # ClientInit, not shared
        assert struct.unpack(">HH", _recv_exact(sock, 4)) == (640, 480)
