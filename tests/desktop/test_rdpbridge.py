"""The RDP side's pure parts: keysyms to RDP keys, the browser's pixel format, the
fence around aardwolf (its version, no socket of its own)."""

from __future__ import annotations

import asyncio
import re
import struct
from pathlib import Path

import pytest

from broker.desktop import rdpclient
from broker.desktop.rdpbridge import (
    MAX_RECTS,
    NATIVE_FORMAT,
    RdpScreen,
    RfbEncoder,
    _Format,
    key_for,
)
from broker.desktop.rdpclient import RdpError, Rect
from broker.desktop.rfb import ProtocolError


def test_keysyms_become_pc_scancodes_and_the_rest_unicode() -> None:
    assert key_for(ord("a")) == (0x1E, False)
    assert key_for(ord("A")) == (0x1E, False)  # the browser sent Shift itself
    assert key_for(ord("1")) == key_for(ord("!")) == (0x02, False)
    assert key_for(0xFF0D) == (0x1C, False)  # Return
    assert key_for(0xFF51) == (0x4B, True)  # Left: an extended key
    assert key_for(0xFF23) == (0x79, False)  # Henkan of a JIS keyboard
    # Zenkaku_Hankaku and Hiragana_Katakana would be the US layout's backquote and a
    # launcher key: not sent
    assert key_for(0xFF2A) is None and key_for(0xFF27) is None
    # text from an input method: Unicode keysyms, sent as RDP Unicode events
    assert key_for(0x01000000 + ord("日")) == "日"
    assert key_for(0x01000000 + ord("あ")) == "あ"
    assert key_for(0xE9) == "é"  # a Latin-1 keysym
    assert key_for(0xFE03) is None  # ISO_Level3_Shift: no key sent


def test_every_character_novnc_sends_as_a_legacy_keysym_is_that_character_again() -> None:
    """noVNC sends full-width katakana (and Cyrillic, Greek, ...) as legacy keysyms:
    each becomes its character again, for an RDP Unicode event, as noVNC's table says
    (Unicode keysyms, 0x01000000 up, are their code point; two of noVNC's entries
    give one of a neighbouring character, which is what the browser then sends)."""
    js = Path(__file__).parents[2] / "node_modules/@novnc/novnc/core/input/keysymdef.js"
    assert js.exists(), "run npm ci (./run does): noVNC's keysym table is missing"
    pairs = re.findall(r"^\s*(0x[0-9a-f]+):\s*(0x[0-9a-f]+),", js.read_text(), re.M)
    assert len(pairs) > 600
    legacy = [(int(u, 16), int(k, 16)) for u, k in pairs if int(k, 16) < 0x01000000]
    wrong = {hex(k): key_for(k) for u, k in legacy if key_for(k) != chr(u)}
    assert not wrong
    assert key_for(0x04B9) == "ケ" and key_for(0x04A4) == "、" and key_for(0x04B0) == "ー"


def test_pixels_follow_the_browsers_format_and_odd_formats_are_refused() -> None:
    novnc = struct.pack(">BxxxBBBBHHHBBBxxx", 0, 32, 24, 0, 1, 255, 255, 255, 0, 8, 16)
    f = _Format.of(novnc)
    assert f.pack(bytes((1, 2, 3, 255))) == bytes((1, 2, 3, 0))  # R G B X
    native = _Format.of(b"\0\0\0\0" + NATIVE_FORMAT)
    assert native.pack(bytes((1, 2, 3, 255))) == bytes((3, 2, 1, 0))  # B G R X
    sixteen = struct.pack(">BxxxBBBBHHHBBBxxx", 0, 16, 16, 0, 1, 31, 63, 31, 11, 5, 0)
    with pytest.raises(ProtocolError):
        _Format.of(sixteen)


def test_updates_are_raw_or_one_zlib_stream_and_many_rects_one_box() -> None:
    import zlib

    screen = RdpScreen(8, 4)
    screen.paint(Rect(1, 1, 2, 2, bytes(range(16))))
    enc = RfbEncoder()
    raw = enc.update(screen, screen.take(False))
    assert struct.unpack(">BxHHHHHi", raw[:16]) == (0, 1, 1, 1, 2, 2, 0)
    assert len(raw) == 16 + 16
    enc.zlib = True
    whole = enc.update(screen, screen.take(True))
    (n,) = struct.unpack(">I", whole[16:20])
    assert len(zlib.decompressobj().decompress(whole[20 : 20 + n])) == 8 * 4 * 4
    for i in range(1000):  # a browser that asks for nothing: the changes stay bounded
        screen.paint(Rect(i % 8, 0, 1, 1, b"\1\2\3\4"))
    boxes = screen.take(False)
    assert 1 <= len(boxes) <= MAX_RECTS
    assert (boxes[0].x, boxes[0].y, boxes[0].w, boxes[0].h) == (0, 0, 8, 1)


def test_aardwolf_is_the_pinned_version_and_opens_no_socket_itself() -> None:
    from aardwolf._version import __version__
    from aardwolf.network.tpkt import TPKTPacketizer

    assert __version__ == rdpclient.AARDWOLF_VERSION
    dial = rdpclient._Dial(object(), TPKTPacketizer())
    with pytest.raises(RdpError, match="only over a given stream"):
        asyncio.run(dial.connect())


def test_a_refused_forward_to_an_rdp_port_names_the_console_desktop() -> None:
    from broker.access.door import InstrumentTarget
    from broker.frontdoor.raw_paths import forward_refusal, interactive_port

    target = InstrumentTarget(
        "win-lis-1", "h1", "gw1", "10.0.0.5", 22, (3389,), "svc", "pw", protocol="rdp"
    )
    kind = interactive_port(target, 3389)
    assert kind == "rdp"
    text = forward_refusal(target, 3389, kind, "alice")
    assert "RDP desktop port" in text and "/console/desktop/win-lis-1?port=3389" in text


def test_rdp_bitmaps_off_the_screen_are_dropped_and_overhanging_ones_cut() -> None:
    from types import SimpleNamespace

    from aardwolf.commons.queuedata import RDPDATATYPE
    from PIL import Image

    from broker.desktop.rdpclient import RdpSession

    q: asyncio.Queue[object] = asyncio.Queue()

    def video(x: int, y: int, w: int, h: int) -> object:
        return SimpleNamespace(
            type=RDPDATATYPE.VIDEO, x=x, y=y, data=Image.new("RGBA", (w, h), (9, 8, 7, 255))
        )

    for item in (video(900, 0, 10, 10), video(95, 75, 10, 10), None):
        q.put_nowait(item)
    session = RdpSession(SimpleNamespace(ext_out_queue=q), 100, 80)  # type: ignore[arg-type]

    async def both() -> tuple[Rect | None, Rect | None]:
        return await session.next(), await session.next()

    cut, end = asyncio.run(both())
    assert cut is not None and (cut.x, cut.y, cut.width, cut.height) == (95, 75, 5, 5)
    assert cut.pixels == bytes((9, 8, 7, 255)) * 25
    assert end is None


def test_only_a_pointer_of_the_session_or_the_logon_info_counts_as_logged_on() -> None:
    """The login signal of :mod:`broker.desktop.rdpclient`, on aardwolf's own objects
    (a canary for the fenced members it uses: the fast-path reassembler's ``feed``
    and ``logon_info_received``): xrdp's own screens set pointers in cache slots 0
    and 1, which are not a login; a pointer in slot 2 (fast or slow path) is."""
    from aardwolf.commons.iosettings import RDPIOSettings
    from aardwolf.commons.target import RDPTarget
    from aardwolf.protocol.fastpath import TS_FP_UPDATE

    async def check() -> None:
        conn = rdpclient._Connection(RDPTarget(ip="127.0.0.1"), None, RDPIOSettings())
        assert not conn.logon_info_received.is_set()
        feed = conn._RDPConnection__fastpath_reassembler.feed
        for code, slot_at in ((0x9, 0), (0xA, 0), (0xB, 2)):  # colour, cached, new pointer
            for slot in (1, 0):
                data = b"\0" * slot_at + struct.pack("<H", slot) + b"\0" * 10
                feed(TS_FP_UPDATE.from_bytes(bytes((code,)) + struct.pack("<H", len(data)) + data))
                assert not conn.hoshu_logged_on.is_set(), (code, slot)
        data = struct.pack("<H", 2) + b"\0" * 10
        feed(TS_FP_UPDATE.from_bytes(bytes((0x9,)) + struct.pack("<H", len(data)) + data))
        assert conn.hoshu_logged_on.is_set()
        slow = rdpclient._Connection(RDPTarget(ip="127.0.0.1"), None, RDPIOSettings())
        slow.hoshu_pointer(struct.pack("<HH", 24, 1), 2)  # TS_PTRMSGTYPE_POINTER, slot 1
        assert not slow.hoshu_logged_on.is_set()
        slow.hoshu_pointer(struct.pack("<HH", 24, 3), 2)
        assert slow.hoshu_logged_on.is_set()

    asyncio.run(check())


def test_a_non_incremental_ask_for_a_small_area_gets_that_area_not_the_whole_screen() -> None:
    """A browser asking again and again for one pixel "whole" gets one pixel each time:
    the broker does not answer (and record) a full screen per ask; an ask for the whole
    screen still gets all of it, and an ask off the screen gets nothing."""
    from types import SimpleNamespace

    from broker.desktop.rdpbridge import RdpBridge
    from broker.desktop.rdpclient import RdpSession
    from broker.desktop.rfb import Stream

    q: asyncio.Queue[object] = asyncio.Queue()
    session = RdpSession(SimpleNamespace(ext_out_queue=q), 100, 80)  # type: ignore[arg-type]
    sent: list[bytes] = []

    async def send(message: bytes) -> None:
        sent.append(message)

    def ask(incremental: int, x: int, y: int, w: int, h: int) -> bytes:
        return struct.pack(">BBHHHH", 3, incremental, x, y, w, h)

    def boxes(update: bytes) -> list[tuple[int, int, int, int]]:
        (n,) = struct.unpack(">xxH", update[:4])
        out, at = [], 4
        for _ in range(n):
            x, y, w, h, _enc = struct.unpack(">HHHHi", update[at : at + 12])
            out.append((x, y, w, h))
            at += 12 + w * h * 4
        assert at == len(update)
        return out

    async def run() -> None:
        browser: asyncio.Queue[bytes] = asyncio.Queue()
        bridge = RdpBridge(session, send, lambda m: True)
        tasks = [
            asyncio.create_task(bridge.out()),
            asyncio.create_task(bridge.down(Stream(lambda n: browser.get()))),
        ]
        try:
            answered = 0
            for message in (
                ask(0, 0, 0, 100, 80),
                ask(0, 500, 0, 9, 9),
                *[ask(0, 10, 20, 1, 1)] * 5,
            ):
                await browser.put(message)
                if struct.unpack(">H", message[2:4])[0] >= 100:
                    continue  # off the screen: nothing to answer, the next ask shows it
                answered += 1
                async with asyncio.timeout(5):
                    while len(sent) < answered:
                        await asyncio.sleep(0.01)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(run())
    assert boxes(sent[0]) == [(0, 0, 100, 80)]
    assert [boxes(m) for m in sent[1:]] == [[(10, 20, 1, 1)]] * 5  # nothing off the screen
    assert len(sent) == 6
