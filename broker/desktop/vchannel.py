"""Static virtual channel chunks put together into whole PDUs (MS-RDPBCGR 2.2.6.1,
``CHANNEL_PDU_HEADER``: the PDU's whole length, then flags), for the channels the
broker joins (``cliprdr``, :mod:`broker.desktop.rdpclip`; ``rdpdr``,
:mod:`broker.desktop.rdpdrive`).

A PDU longer than the channel's bound is refused at its first chunk and its other
chunks are skipped, so it never takes memory; chunks that make no PDU (one that
continues nothing, more bytes than the PDU said, compressed data aardwolf did not
decompress) raise :class:`ChunkError`, and :meth:`ChunkJoiner.drop` then skips the
rest of that PDU.  :func:`chunks` cuts a PDU the broker sends into chunks.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

FLAG_FIRST, FLAG_LAST, FLAG_SHOW_PROTOCOL = 0x01, 0x02, 0x10
CHUNK = 1600  # CHANNEL_CHUNK_LENGTH: the chunk size every RDP server takes
FLAG_COMPRESSED = 0x00EF0000  # compression bits left set: data that did not decompress


class OutData:
    """What aardwolf's ``send_channel_data`` takes: an object with ``to_bytes``."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def to_bytes(self) -> bytes:
        return self.data


def chunks(data: bytes) -> Iterator[OutData]:
    """``data``, one PDU, as the chunks that carry it (each with its header)."""
    for at in range(0, max(len(data), 1), CHUNK):
        flags = FLAG_SHOW_PROTOCOL
        if at == 0:
            flags |= FLAG_FIRST
        if at + CHUNK >= len(data):
            flags |= FLAG_LAST
        yield OutData(struct.pack("<II", len(data), flags) + data[at : at + CHUNK])


class ChunkError(Exception):
    """Channel chunks that do not make a PDU."""


class PduTooLarge(Exception):
    """The first chunk of a PDU longer than the channel takes (``total`` bytes)."""

    def __init__(self, total: int) -> None:
        super().__init__(f"a channel PDU of {total} bytes")
        self.total = total


class ChunkJoiner:
    """The chunks of one channel, in order, joined into PDUs of at most ``max_pdu``."""

    def __init__(self, max_pdu: int) -> None:
        self.max_pdu = max_pdu
        self._buffer = bytearray()
        self._total = 0  # the length the PDU being put together says it has
        self._skipping = False  # the rest of a refused PDU's chunks

    def feed(self, data: bytes) -> bytes | None:
        """The whole PDU when ``data`` completes one, else None (more to come, or a
        refused PDU's chunk skipped)."""
        if len(data) < 8:
            raise ChunkError("a channel chunk shorter than its header")
        total, flags = struct.unpack_from("<II", data)
        if flags & FLAG_COMPRESSED:
            raise ChunkError("compressed channel data that did not decompress")
        if flags & FLAG_FIRST:
            self._buffer.clear()
            self._skipping = False
            self._total = total
            if total > self.max_pdu:
                self._skipping = not flags & FLAG_LAST
                raise PduTooLarge(total)
        elif self._skipping:
            self._skipping = not flags & FLAG_LAST
            return None
        elif not self._buffer:
            raise ChunkError("a channel chunk that continues nothing")
        self._buffer += data[8:]
        if len(self._buffer) > self._total:
            raise ChunkError("channel chunks longer than their PDU")
        if not flags & FLAG_LAST:
            return None
        whole = bytes(self._buffer)
        self._buffer.clear()
        return whole

    def drop(self, data: bytes) -> bytes:
        """After ``data`` made no PDU: the bytes put together so far with its own (what
        a refusal reports the size and hash of); the PDU's other chunks are skipped."""
        bad = bytes(self._buffer) + bytes(data[8:])
        last = len(data) < 8 or bool(struct.unpack_from("<I", data, 4)[0] & FLAG_LAST)
        self._skipping = not last
        self._buffer.clear()
        return bad
