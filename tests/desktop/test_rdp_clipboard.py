"""The RDP clipboard, off by default and switched on by the hospital's policy.

The instrument is Debian's xrdp in front of a real Xvnc, with xrdp's own channel
server (``xrdp-chansrv``) on that X display: a copy made by an X program on the
instrument (it owns the CLIPBOARD selection) is what xrdp announces over RDP, and
what an X program pastes is what xrdp got over RDP.  The browser side is the console
WebSocket spoken as noVNC speaks it (ClientCutText, ServerCutText).

Proved here: with the hospital's clipboard switch on, text copied on the instrument
reaches the browser as ServerCutText and text the browser sends is what the
instrument pastes, each written as ``file.transferred`` (direction, size, SHA-256,
never the text) and recorded (``X``).  With it off (the default) the clipboard
channel is not offered at all: the browser's text is refused (``file.refused``
``clipboard_off``, size and SHA-256) and not pasted on the instrument, and the
instrument's copy never reaches the browser.  A clipboard PDU of the instrument that
does not parse is refused (``file.refused`` ``clipboard_malformed``) and the session,
its clipboard included, goes on.  The channel's own rules (bounds, the reply
timeout, files never crossing) are checked on :class:`~broker.desktop.rdpclip.Cliprdr`
directly with the PDUs MS-RDPECLIP defines.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import struct
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from audit.events import AuditEvent
from broker.desktop import rdpclip
from broker.desktop.rdpclip import Cliprdr, ClipRefused, ClipText, pdu
from broker.desktop.recording import read_records
from broker.desktop.rfb import EXT_DESKTOP_SIZE, RAW
from broker.store.directory import StoreAccessPolicy
from tests.desktop.clipdesk import clipboard_up
from tests.desktop.conftest import (
    Desk,
    Xrdp,
    Xvnc,
    _free_port,
    _listening,
    _self_signed,
    pinned_desk,
)
from tests.desktop.helpers import (
    console_sign_in,
    start_chansrv,
    start_xrdp_with_clipboard,
    stop,
    ws_path,
    x_copy,
    x_paste,
    x_uncopy,
)
from tests.desktop.rfbscreen import Screen, screen_until
from tests.desktop.wsclient import WsClient, ws_open
from tests.support import poll, poll_sync
from tests.support.served import served

SIZE = (800, 600)
ON_INSTRUMENT = "QC lot 4711 passed é 日本"  # é is in ISO 8859-1; the kanji are not
TO_BROWSER = "QC lot 4711 passed é ??".encode("latin-1")  # RFB's clipboard is ISO 8859-1
FROM_BROWSER = "calibrate 42 ü".encode("latin-1")  # as noVNC sends it


@pytest.fixture
def xrdp_clip(tmp_path: Path, xvnc: Xvnc) -> Iterator[Xrdp]:
    """xrdp with its clipboard channel served by xrdp-chansrv on the Xvnc's display."""
    cert, key = _self_signed(tmp_path, "rdp-a")
    chansrv = start_chansrv(tmp_path, xvnc.display)
    port = _free_port()
    proc = start_xrdp_with_clipboard(tmp_path, xvnc, port, "rdp-a")
    try:
        poll_sync(lambda: _listening(port) or proc.poll() is not None, 10, "xrdp to listen")
        assert proc.poll() is None, (tmp_path / f"xrdp-{port}.log").read_text()
        yield Xrdp(port, xvnc, cert, key)
    finally:
        stop(proc, chansrv)


def _switch_on(d: Desk) -> None:
    """The hospital's admin switches the clipboard on (the gate reads the store)."""
    d.s.estate.update_policy(d.actor("hadmin"), "hoshi-hospital", {"clipboard_allowed": True})


async def _open(d: Desk, url: str, http: httpx.AsyncClient, *encodings: int) -> WsClient:
    """alice's desktop as noVNC opens it (Raw and ``encodings``), the screen asked for."""
    d.gate.clipboard_allowed = StoreAccessPolicy(d.s).clipboard_allowed  # as build_broker does
    token = await console_sign_in(http, d, "alice")
    ws = await ws_open(url, ws_path(d.port, token), cookie=f"hoshu_session={token}", origin=url)
    assert ws.status == 101
    init = await ws.rfb_handshake()
    assert struct.unpack(">HH", init[:4]) == SIZE
    asked = (RAW, *encodings)
    await ws.send(struct.pack(f">BxH{len(asked)}i", 2, len(asked), *asked))  # SetEncodings
    await ws.send(struct.pack(">BBHHHH", 3, 0, 0, 0, *SIZE))
    return ws


async def _messages(ws: WsClient, seconds: float) -> list[bytes]:
    """Every RFB message the browser gets within ``seconds``, asking for updates."""
    got: list[bytes] = []
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(seconds):
            while True:
                op, payload = await ws.frame()
                assert op == 0x2, (op, payload[:60])
                got.append(payload)
                if payload[0] == 0:  # an update: ask for the next, as noVNC does
                    await ws.send(struct.pack(">BBHHHH", 3, 1, 0, 0, *SIZE))
    return got


async def _server_cut(ws: WsClient, timeout_s: float = 15) -> bytes:
    """The text of the next ServerCutText the browser gets (updates read past)."""
    async with asyncio.timeout(timeout_s):
        while True:
            op, payload = await ws.frame()
            assert op == 0x2, (op, payload[:60])
            if payload[0] == 3:
                (n,) = struct.unpack(">I", payload[4:8])
                assert len(payload) == 8 + n
                return payload[8:]


def _client_cut(text: bytes) -> bytes:
    return struct.pack(">BxxxI", 6, len(text)) + text


def _no_text_in(events: list[AuditEvent], *texts: bytes) -> None:
    dumped = [json.loads(e.to_json()) for e in events]
    for t in texts:
        assert t.decode("latin-1") not in json.dumps(dumped, ensure_ascii=False)


def _recorded_cuts(d: Desk, session_id: str) -> list[bytes]:
    _header, records = read_records(d.store.read(f"{session_id}.rfb"))
    return [data for _ms, kind, data in records if kind == b"X"]


async def test_rdp_clipboard_crosses_both_ways_logged_and_recorded_when_allowed(
    tmp_path: Path, xrdp_clip: Xrdp
) -> None:
    display = xrdp_clip.xvnc.display
    async with pinned_desk(tmp_path, xrdp_clip, rdp_size=SIZE) as d:
        _switch_on(d)
        d.grant()
        async with served(d.app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
            ws = await _open(d, url, http)
            [live] = d.registry.list()
            await clipboard_up(d, live.session_id)
            # instrument -> browser: an X program copies, the browser gets the text
            owner = await x_copy(display, ON_INSTRUMENT)
            try:
                assert await _server_cut(ws) == TO_BROWSER
            finally:
                await x_uncopy(owner)
            await poll(lambda: bool(d.events.of_type("file.transferred")), 5, "the copy's log")
            [out] = d.events.of_type("file.transferred")
            assert out.get("NetworkDirection") == "Outbound"
            assert out.get("TargetFileSize") == len(TO_BROWSER)
            assert out.get("TargetFileSHA256") == hashlib.sha256(TO_BROWSER).hexdigest()
            assert out.details == {"tool": "clipboard", "operation": "download"}
            # browser -> instrument: the browser's text is what an X program pastes
            await ws.send(_client_cut(FROM_BROWSER))
            await poll(lambda: len(d.events.of_type("file.transferred")) == 2, 5, "the paste's log")
            assert await x_paste(display) == FROM_BROWSER.decode("latin-1")
            inbound = d.events.of_type("file.transferred")[1]
            assert inbound.get("NetworkDirection") == "Inbound"
            assert inbound.get("TargetFileSize") == len(FROM_BROWSER)
            assert inbound.get("TargetFileSHA256") == hashlib.sha256(FROM_BROWSER).hexdigest()
            assert inbound.details == {"tool": "clipboard", "operation": "upload"}
            ws.close()
            await poll(lambda: bool(d.events.of_type("session.ended")), 10, "session.ended")
        assert not d.events.of_type("file.refused")
        _no_text_in(d.events.events, TO_BROWSER, FROM_BROWSER)
        cuts = _recorded_cuts(d, live.session_id)
        assert [c[8:] for c in cuts] == [TO_BROWSER, FROM_BROWSER]
        assert [c[0] for c in cuts] == [3, 6]  # ServerCutText, ClientCutText


async def test_with_the_clipboard_off_nothing_crosses_and_the_browsers_copy_is_refused(
    tmp_path: Path, xrdp_clip: Xrdp
) -> None:
    display = xrdp_clip.xvnc.display
    async with pinned_desk(tmp_path, xrdp_clip, rdp_size=SIZE) as d:
        d.grant()  # the hospital's policy as it comes: the clipboard off
        async with served(d.app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
            ws = await _open(d, url, http)
            [live] = d.registry.list()
            owner = await x_copy(display, ON_INSTRUMENT)
            try:
                # with the switch on this arrives within a second (the test above); the
                # channel is not joined now, so for 3 s there are updates, no text
                got = await _messages(ws, 3)
                assert got and all(m[0] == 0 for m in got), {m[0] for m in got}
                await ws.send(_client_cut(FROM_BROWSER))
                await poll(lambda: bool(d.events.of_type("file.refused")), 5, "the refusal")
                # the instrument still pastes its own copy, not the browser's text
                assert await x_paste(display) == ON_INSTRUMENT
            finally:
                await x_uncopy(owner)
            ws.close()
            await poll(lambda: bool(d.events.of_type("session.ended")), 10, "session.ended")
        [refused] = d.events.of_type("file.refused")
        assert refused.get("EventResultDetails") == "clipboard_off"
        assert refused.get("NetworkDirection") == "Inbound"
        assert refused.get("TargetFileSize") == len(FROM_BROWSER)
        assert refused.get("TargetFileSHA256") == hashlib.sha256(FROM_BROWSER).hexdigest()
        assert not d.events.of_type("file.transferred")
        assert _recorded_cuts(d, live.session_id) == []
        _no_text_in(d.events.events, FROM_BROWSER)


async def test_a_malformed_clipboard_pdu_is_refused_and_the_session_and_clipboard_go_on(
    tmp_path: Path, xrdp_clip: Xrdp
) -> None:
    """The PDU is given to the session's own clipboard channel as if the instrument had
    sent it (xrdp sends none that are malformed); the same session then still carries
    the instrument's next copy."""
    display = xrdp_clip.xvnc.display
    async with pinned_desk(tmp_path, xrdp_clip, rdp_size=SIZE) as d:
        _switch_on(d)
        d.grant()
        async with served(d.app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
            ws = await _open(d, url, http)
            [live] = d.registry.list()
            await clipboard_up(d, live.session_id)
            channel = d.gate._relays[live.session_id].bridge.rdp.clipboard  # type: ignore[union-attr]
            assert channel is not None
            # a Format List whose long format name has no end
            bad = pdu(rdpclip.FORMAT_LIST, 0, struct.pack("<I", 13) + "CF".encode("utf-16-le"))
            await channel.process_channel_data(struct.pack("<II", len(bad), 0x13) + bad)
            await poll(lambda: bool(d.events.of_type("file.refused")), 5, "the refusal")
            [refused] = d.events.of_type("file.refused")
            assert refused.get("EventResultDetails") == "clipboard_malformed"
            assert refused.get("NetworkDirection") == "Outbound"
            assert refused.get("TargetFileSize") == len(bad)
            assert refused.get("TargetFileSHA256") == hashlib.sha256(bad).hexdigest()
            owner = await x_copy(display, "after the bad PDU")
            try:
                assert await _server_cut(ws) == b"after the bad PDU"
            finally:
                await x_uncopy(owner)
            assert d.registry.list() == [live]
            ws.close()
            await poll(lambda: bool(d.events.of_type("session.ended")), 10, "session.ended")


async def test_text_the_browser_copied_is_still_pasted_after_the_desktop_is_resized(
    tmp_path: Path, xrdp_clip: Xrdp
) -> None:
    """A resize is a new RDP connection (``docs/desktop.md``, "The window's size"): the
    browser's copy, logged once, is offered to it again.  ASCII text: right after the
    reconnection xrdp 0.9.21's chansrv at times hands X a non-ASCII character as UTF-8
    under the Latin-1 ``STRING`` target (``ü`` pasted as ``Ã¼``), which is its own."""
    display = xrdp_clip.xvnc.display
    copied = b"calibrate 42 before the resize"
    async with pinned_desk(tmp_path, xrdp_clip, rdp_size=SIZE) as d:
        _switch_on(d)
        d.grant()
        async with served(d.app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
            ws = await _open(d, url, http, EXT_DESKTOP_SIZE)
            await ws.send(_client_cut(copied))
            await poll(lambda: bool(d.events.of_type("file.transferred")), 5, "the copy's log")
            assert await x_paste(display) == copied.decode()
            seen = Screen(*SIZE)
            await ws.send(struct.pack(">BxHHBxIHHHHI", 251, 1024, 768, 1, 0, 0, 0, 1024, 768, 0))
            await screen_until(ws, seen, lambda: (1, 0, 1024, 768) in seen.sizes, 20)
            assert await x_paste(display) == copied.decode()
            ws.close()
            await poll(lambda: bool(d.events.of_type("session.ended")), 10, "session.ended")
        assert len(d.events.of_type("file.transferred")) == 1


# --- the channel's own rules, PDU by PDU ---------------------------------------------


class _Wire:
    """Stands in for aardwolf's connection under the channel: what it sends."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def handle_out_data(self, dataobj: Any, *_args: Any) -> tuple[bool, None]:
        self.sent.append(dataobj.to_bytes())
        return True, None

    def pdus(self) -> list[tuple[int, int, bytes]]:
        """The clipboard PDUs sent, each (type, flags, body), chunks put together."""
        out, buf = [], b""
        for chunk in self.sent:
            total, flags = struct.unpack_from("<II", chunk)
            buf = chunk[8:] if flags & 1 else buf + chunk[8:]
            if flags & 2:
                assert len(buf) == total
                kind, fl, n = struct.unpack_from("<HHI", buf)
                out.append((kind, fl, buf[8 : 8 + n]))
        self.sent.clear()
        return out


async def _channel() -> tuple[Cliprdr, _Wire]:
    settings = SimpleNamespace()
    channel = Cliprdr(settings)
    assert settings.hoshu_cliprdr is channel
    wire = _Wire()
    channel.connection = wire
    caps = struct.pack("<HH", 1, 0) + struct.pack("<HHII", 1, 12, 2, rdpclip.LONG_FORMAT_NAMES)
    await _feed(channel, pdu(rdpclip.CLIP_CAPS, 0, caps))
    await _feed(channel, pdu(rdpclip.MONITOR_READY))
    kinds = [k for k, _f, _b in wire.pdus()]
    assert kinds == [rdpclip.CLIP_CAPS, rdpclip.FORMAT_LIST] and channel.long_names
    return channel, wire


async def _feed(channel: Cliprdr, data: bytes, chunk: int = 1600) -> None:
    for at in range(0, len(data), chunk):
        flags = (1 if at == 0 else 0) | (2 if at + chunk >= len(data) else 0)
        await channel.process_channel_data(
            struct.pack("<II", len(data), flags) + data[at : at + chunk]
        )


def _text_list() -> bytes:
    return pdu(rdpclip.FORMAT_LIST, 0, struct.pack("<I", 13) + "".encode("utf-16-le") + b"\0\0")


async def test_the_channel_asks_for_announced_text_and_answers_only_for_text() -> None:
    channel, wire = await _channel()
    await _feed(channel, _text_list())
    assert [k for k, _f, _b in wire.pdus()] == [rdpclip.FORMAT_LIST_RESPONSE, rdpclip.DATA_REQUEST]
    text = "line 1\r\nline 2 ü".encode("utf-16-le") + b"\0\0"
    await _feed(channel, pdu(rdpclip.DATA_RESPONSE, rdpclip.RESPONSE_OK, text), chunk=7)
    assert channel.events.get_nowait() == ClipText("line 1\nline 2 ü")
    # the browser's text: announced, then given when asked for, CR LF, NUL-terminated
    await channel.offer("a\nb")
    [(kind, _f, body)] = wire.pdus()
    assert kind == rdpclip.FORMAT_LIST and struct.unpack_from("<I", body)[0] == 13
    await _feed(channel, pdu(rdpclip.DATA_REQUEST, 0, struct.pack("<I", 13)))
    assert wire.pdus() == [(rdpclip.DATA_RESPONSE, 1, "a\r\nb\0".encode("utf-16-le"))]
    # another format, or a file's contents: refused, nothing else sent
    await _feed(channel, pdu(rdpclip.DATA_REQUEST, 0, struct.pack("<I", 8)))
    await _feed(channel, pdu(rdpclip.FILECONTENTS_REQUEST, 0, struct.pack("<I", 7) + bytes(24)))
    assert wire.pdus() == [
        (rdpclip.DATA_RESPONSE, rdpclip.RESPONSE_FAIL, b""),
        (rdpclip.FILECONTENTS_RESPONSE, rdpclip.RESPONSE_FAIL, struct.pack("<I", 7)),
    ]
    # clipboard data nobody asked for is dropped
    await _feed(channel, pdu(rdpclip.DATA_RESPONSE, rdpclip.RESPONSE_OK, text))
    assert channel.events.empty()


async def test_a_pdu_over_the_bound_is_refused_from_its_first_chunk_and_skipped() -> None:
    channel, wire = await _channel()
    total = rdpclip.MAX_PDU + 1
    await channel.process_channel_data(struct.pack("<II", total, 1) + bytes(1600))
    await channel.process_channel_data(struct.pack("<II", total, 0) + bytes(1600))
    await channel.process_channel_data(struct.pack("<II", total, 2) + bytes(16))
    refused = channel.events.get_nowait()
    assert isinstance(refused, ClipRefused)
    assert (refused.reason, refused.size, refused.sha256) == ("clipboard_too_large", total, None)
    assert channel.events.empty()  # the other chunks were skipped, not refused again
    await _feed(channel, _text_list())  # the next PDU is read again
    assert [k for k, _f, _b in wire.pdus()][-1] == rdpclip.DATA_REQUEST


@pytest.mark.parametrize(
    "data",
    [
        b"\x02\x00",  # shorter than a clipboard header
        pdu(rdpclip.FORMAT_LIST, 0, bytes(35))[:-4],  # shorter than its header says
        pdu(rdpclip.DATA_REQUEST),  # no format
        struct.pack("<HHI", rdpclip.CLIP_CAPS, 0, 8) + struct.pack("<HHHH", 1, 0, 1, 40),
    ],
    ids=["cut-short", "short-of-its-length", "no-format", "bad-capability"],
)
async def test_a_pdu_that_does_not_parse_is_refused_and_the_channel_goes_on(data: bytes) -> None:
    channel, wire = await _channel()
    await _feed(channel, data)
    refused = channel.events.get_nowait()
    assert isinstance(refused, ClipRefused) and refused.reason == "clipboard_malformed"
    assert refused.sha256 == hashlib.sha256(data).hexdigest()
    await _feed(channel, _text_list())
    assert [k for k, _f, _b in wire.pdus()][-1] == rdpclip.DATA_REQUEST


async def test_chunks_out_of_order_and_odd_length_text_are_refused() -> None:
    channel, _wire = await _channel()
    await channel.process_channel_data(struct.pack("<II", 20, 2) + bytes(20))  # no first
    await _feed(channel, _text_list())
    await _feed(channel, pdu(rdpclip.DATA_RESPONSE, rdpclip.RESPONSE_OK, b"abc"))
    reasons = [channel.events.get_nowait() for _ in range(2)]
    assert all(isinstance(r, ClipRefused) and r.reason == "clipboard_malformed" for r in reasons)
    assert channel.events.empty()


async def test_text_announced_but_not_sent_in_time_is_given_up_and_a_late_answer_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(rdpclip, "REPLY_TIMEOUT_S", 0.05)
    channel, _wire = await _channel()
    await _feed(channel, _text_list())
    refused = await asyncio.wait_for(channel.events.get(), 5)
    assert isinstance(refused, ClipRefused) and refused.reason == "clipboard_timeout"
    late = "late".encode("utf-16-le") + b"\0\0"
    await _feed(channel, pdu(rdpclip.DATA_RESPONSE, rdpclip.RESPONSE_OK, late))
    assert channel.events.empty()


async def test_an_instrument_without_a_clipboard_channel_still_opens_with_the_switch_on(
    tmp_path: Path, xrdp: Xrdp
) -> None:
    """The lab's xrdp allows no channel (``allow_channels=false``): asked for the
    clipboard channel, it gives none; the desktop opens and runs, and the browser's
    text is refused as having nowhere to go (``clipboard_unavailable``)."""
    async with pinned_desk(tmp_path, xrdp, rdp_size=SIZE) as d:
        _switch_on(d)
        d.grant()
        async with served(d.app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
            ws = await _open(d, url, http)
            got = await _messages(ws, 1)
            assert got and got[0][0] == 0  # the screen
            await ws.send(_client_cut(FROM_BROWSER))
            await poll(lambda: bool(d.events.of_type("file.refused")), 5, "the refusal")
            assert len(d.registry.list()) == 1
            ws.close()
            await poll(lambda: bool(d.events.of_type("session.ended")), 10, "session.ended")
        [refused] = d.events.of_type("file.refused")
        assert refused.get("EventResultDetails") == "clipboard_unavailable"
        assert refused.get("TargetFileSHA256") == hashlib.sha256(FROM_BROWSER).hexdigest()
        assert not d.events.of_type("file.transferred")
        [ended] = d.events.of_type("session.ended")
        assert ended.get("EventResultDetails") == "browser_closed"
