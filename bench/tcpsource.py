"""A loopback byte source standing in for an instrument's TCP service.

``python -m bench.tcpsource FILE`` listens on 127.0.0.1 (a free port, printed
as the first line of stdout).  A client sends the number of bytes it wants as
one decimal line (at most 20 digits, read within 10 s); the source sends that
many bytes of FILE with ``sendfile`` (zero copy, wrapping around) and closes.
It runs in its own process so that serving does not compete with the
measuring process for the interpreter lock.
"""

from __future__ import annotations

import os
import socket
import sys
import threading

MAX_REQUEST = 2_000_000_000_000


def _serve(conn: socket.socket, path: str) -> None:
    try:
        _send(conn, path)
    except OSError:  # the client went away or was too slow: nothing to serve
        pass


def _send(conn: socket.socket, path: str) -> None:
    with conn:
        conn.settimeout(10)
        line = b""
        while not line.endswith(b"\n"):
            data = conn.recv(32)
            if not data or len(line) > 24:
                return
            line += data
        try:
            want = int(line.strip())
        except ValueError:
            return
        if not 0 < want <= MAX_REQUEST:
            return
        conn.settimeout(600)
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            while want > 0:
                sent = conn.sendfile(f, 0, min(want, size))
                if sent <= 0:
                    return
                want -= sent


def main(argv: list[str]) -> int:
    path = argv[0]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", 0))
        srv.listen(64)
        print(srv.getsockname()[1], flush=True)
        while True:
            conn, _ = srv.accept()
            threading.Thread(target=_serve, args=(conn, path), daemon=True).start()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
