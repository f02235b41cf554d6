"""The broker's RFB framing on its own: what an instrument or a browser may send, and the
bad input that ends a session (a huge, malformed or unknown message) with a clear reason."""

from __future__ import annotations

import asyncio
import struct

import pytest

from broker.desktop import extclip
from broker.desktop.rfb import (
    EXT_CLIPBOARD,
    MAX_MESSAGE,
    ClientFramer,
    ProtocolError,
    Screen,
    ServerFramer,
    Stream,
    vnc_response,
)


def _stream(data: bytes, *, stall: bool = False) -> Stream:
    """``data`` in pieces, then the end (or, ``stall``: nothing more, ever)."""
    chunks = [data[i : i + 7] for i in range(0, len(data), 7)]

    async def read(_n: int) -> bytes:
        if not chunks and stall:
            await asyncio.Event().wait()
        return chunks.pop(0) if chunks else b""

    return Stream(read, timeout_s=0.2)


def _update(*rects: bytes) -> bytes:
    return struct.pack(">BxH", 0, len(rects)) + b"".join(rects)


def _rect(x: int, y: int, w: int, h: int, enc: int, body: bytes = b"") -> bytes:
    return struct.pack(">HHHHi", x, y, w, h, enc) + body


async def test_a_framebuffer_update_is_relayed_whole_and_resizes_follow() -> None:
    screen = Screen(100, 50, 4)
    raw = _rect(0, 0, 2, 2, 0, b"\x01" * 16)
    resize = _rect(0, 0, 200, 80, -223)
    zrle = _rect(0, 0, 200, 80, 16, struct.pack(">I", 3) + b"abc")
    data = _update(raw, resize) + _update(zrle)
    s = _stream(data)
    framer = ServerFramer(screen)
    first = await framer.next(s)
    second = await framer.next(s)
    assert first.data + second.data == data
    assert (screen.width, screen.height) == (200, 80)


@pytest.mark.parametrize(
    ("message", "why"),
    [
        (_update(_rect(90, 0, 20, 10, 0, b"\0" * 800)), "outside the 100x50 screen"),
        (_update(_rect(0, 0, 10, 10, 7)), "encoding 7"),
        (_update(_rect(0, 0, 10, 10, 16, struct.pack(">I", 1 << 30))), "larger than hoshu"),
        (_update(_rect(0, 0, 0, 0, -223)), "resized its screen to 0x0"),
        (bytes((9,)), "message type 9"),
        (_update(_rect(0, 0, 10, 10, 0, b"\0" * 10)), "stopped in the middle"),
    ],
)
async def test_bad_instrument_messages_end_the_session(message: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        await ServerFramer(Screen(100, 50, 4)).next(_stream(message, stall=True))


async def test_the_browser_may_ask_only_for_encodings_hoshu_frames() -> None:
    asked = [7, 16, 5, 0, 1, -239, -223, -1063131698, -258, -313]  # Tight, ZRLE, Hextile...
    s = _stream(struct.pack(f">BxH{len(asked)}i", 2, len(asked), *asked))
    framer = ClientFramer(Screen(10, 10, 4))
    m = await framer.next(s)
    assert framer.encodings == [16, 0, 1, -239, -223]
    assert m.data == struct.pack(">BxH5i", 2, 5, 16, 0, 1, -239, -223)


async def test_extended_clipboard_is_asked_of_the_instrument_only_when_the_clipboard_is_on() -> (
    None
):
    asked = [16, EXT_CLIPBOARD, 0]
    for allowed, kept in ((False, [16, 0]), (True, [16, EXT_CLIPBOARD, 0])):
        s = _stream(struct.pack(f">BxH{len(asked)}i", 2, len(asked), *asked))
        framer = ClientFramer(Screen(10, 10, 4), clipboard=allowed)
        m = await framer.next(s)
        assert framer.encodings == kept
        assert m.data == struct.pack(f">BxH{len(kept)}i", 2, len(kept), *kept)


async def test_an_extended_clipboard_message_is_read_whole_and_parsed_both_ways() -> None:
    """Its bytes are framed by its negative length; the text is UTF-8 (LF line ends);
    one that does not parse comes back refused and the next message is read."""
    text = "検体ケンタイ１２３\nline 2"
    provide = extclip.message(3, extclip.provide(text))
    bad = struct.pack(">Bxxxi", 3, -8) + struct.pack(">II", extclip.NOTIFY | extclip.PEEK, 0)
    s = _stream(provide + bad + struct.pack(">Bxxxi", 3, -4) + struct.pack(">I", extclip.PEEK))
    framer = ServerFramer(Screen(10, 10, 4))
    first, second, third = [await framer.next(s) for _ in range(3)]
    assert first.data == provide and first.cut is None and first.refused is None
    assert first.clip is not None and first.clip.data == text
    assert second.clip is None and second.refused is not None
    assert second.refused.reason == "clipboard_malformed" and second.data == bad
    assert third.clip == extclip.Clip(extclip.PEEK)
    client = ClientFramer(Screen(10, 10, 4), clipboard=True)
    m = await client.next(_stream(extclip.message(6, extclip.provide(text))))
    assert m.kind == 6 and m.clip is not None and m.clip.utf8 == text.encode()


async def test_an_extended_clipboard_message_longer_than_hoshu_relays_ends_the_session() -> None:
    """As a classic one does: more than MAX_MESSAGE bytes on the wire are not read."""
    huge = struct.pack(">Bxxxi", 6, -(MAX_MESSAGE + 1)) + struct.pack(">I", extclip.PROVIDE)
    with pytest.raises(ProtocolError, match="larger than hoshu relays"):
        await ClientFramer(Screen(10, 10, 4), clipboard=True).next(_stream(huge))
    most = struct.pack(">Bxxxi", 3, -(2**31))
    with pytest.raises(ProtocolError, match="larger than hoshu relays"):
        await ServerFramer(Screen(10, 10, 4)).next(_stream(most))


async def test_clipboard_and_input_are_told_apart_and_unknown_messages_refused() -> None:
    framer = ClientFramer(Screen(10, 10, 4))
    cut = await framer.next(_stream(struct.pack(">BxxxI", 6, 5) + b"hello"))
    key = await framer.next(_stream(struct.pack(">BBxxI", 4, 1, 0x61)))
    assert (cut.cut, cut.input, key.cut, key.input) == (b"hello", False, None, True)
    with pytest.raises(ProtocolError, match="type 150"):
        await framer.next(_stream(bytes((150,)) + b"\0" * 9))


def test_vnc_authentication_answer_is_the_des_of_the_challenge() -> None:
    # the answer every VNC server computes: DES, key = password with each byte's bits
    # reversed (RFC 6143 7.2.2); this pair is what TigerVNC's vncpasswd scheme gives
    challenge = bytes(range(16))
    answer = vnc_response("password", challenge)
    assert len(answer) == 16 and answer != challenge
    assert vnc_response("password" + "ignored", challenge) == answer  # 8 characters count
    assert vnc_response("passwore", challenge) != answer
