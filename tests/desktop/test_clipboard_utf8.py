"""Japanese clipboard text over RFB's Extended Clipboard (UTF-8), VNC and RDP.

The browser side is the console WebSocket spoken as noVNC 1.7 speaks it
(``core/rfb.js``): it asks for the Extended Clipboard pseudo-encoding, answers the
server's caps with its own (every action, text, no unsolicited text), asks for text
the server announces and provides its own when asked.  The instrument is a real
TigerVNC Xvnc (VNC), or Debian's xrdp with ``xrdp-chansrv`` in front of one (RDP);
an X program on its display copies (owns CLIPBOARD) and pastes.

Proved here: with the hospital's switch on, "検体ケンタイ１２３" copied on the
instrument arrives in the browser exactly and the browser's Japanese text is what
the instrument pastes, each a ``file.transferred`` with the size and SHA-256 of the
UTF-8 text (never the text) and an ``X`` record; the caps the browser gets name text
alone.  With the switch off the pseudo-encoding is not passed on: no caps, no notify,
nothing of either clipboard reaches the other side, and a provide sent anyway is
refused (``clipboard_off``).  A malformed extended message or a zlib bomb is refused
(``clipboard_malformed``, ``clipboard_too_large``) and the session and its clipboard
go on.  Extended text towards a server that did not announce the pseudo-encoding
goes as classic cut text (ISO 8859-1, ``?`` for the rest).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import struct
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from audit.events import AuditEvent
from broker.desktop import extclip
from broker.desktop.extclip import CAPS, NOTIFY, PROVIDE, REQUEST, TEXT, Clip
from broker.desktop.recording import read_records
from broker.desktop.rfb import EXT_CLIPBOARD, RAW
from broker.store.directory import StoreAccessPolicy
from tests.desktop.conftest import Desk, Xrdp, pinned_desk
from tests.desktop.helpers import console_sign_in, ws_path, x_copy, x_paste, x_uncopy
from tests.desktop.test_rdp_clipboard import xrdp_clip  # noqa: F401  (fixture)
from tests.desktop.wsclient import WsClient, ws_open
from tests.support import poll
from tests.support.served import served

JAPANESE = "検体ケンタイ１２３"
FROM_BROWSER = "校正 ロット４７１１ ｹﾝﾀｲ"
ALL_ACTIONS = CAPS | REQUEST | extclip.PEEK | NOTIFY | PROVIDE


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class NoVnc:
    """The browser's side of the clipboard as noVNC 1.7 has it, over the console socket."""

    ws: WsClient
    size: tuple[int, int]
    copied: str | None = None  # the browser's clipboard text (clipboardPasteFrom)
    caps: list[Clip] = field(default_factory=list)  # the server's caps, as received
    got: asyncio.Queue[str] = field(default_factory=asyncio.Queue)  # texts provided to it
    other: list[bytes] = field(default_factory=list)  # clipboard messages that were not caps

    async def run(self) -> None:
        while True:
            op, m = await self.ws.frame()
            assert op == 0x2, (op, m[:60])
            if m[0] == 0:  # an update: ask for the next
                await self.ws.send(struct.pack(">BBHHHH", 3, 1, 0, 0, *self.size))
                continue
            if m[0] != 3:
                continue
            (n,) = struct.unpack_from(">i", m, 4)
            if n >= 0:
                self.other.append(m)
                continue
            clip = extclip.parse(m[8:])
            if clip.action == CAPS:
                self.caps.append(clip)
                await self.send(Clip(CAPS, True, ALL_ACTIONS, 0))
                continue
            self.other.append(m)
            if clip.action == NOTIFY and clip.text:
                await self.send(Clip(REQUEST, True))
            elif clip.action == REQUEST and clip.text and self.copied is not None:
                await self.send(extclip.provide(self.copied))
            elif clip.action == PROVIDE and clip.data is not None:
                await self.got.put(clip.data)

    async def send(self, clip: Clip) -> None:
        await self.ws.send(extclip.message(6, clip))

    async def paste_from(self, text: str) -> None:
        """What noVNC's ``clipboardPasteFrom`` does once the server's caps came."""
        self.copied = text
        await self.send(Clip(NOTIFY, True))


@contextlib.asynccontextmanager
async def _browser(
    d: Desk, url: str, http: httpx.AsyncClient, size: tuple[int, int]
) -> AsyncIterator[NoVnc]:
    d.gate.clipboard_allowed = StoreAccessPolicy(d.s).clipboard_allowed  # as build_broker does
    token = await console_sign_in(http, d, "alice")
    ws = await ws_open(url, ws_path(d.port, token), cookie=f"hoshu_session={token}", origin=url)
    assert ws.status == 101
    await ws.rfb_handshake()
    asked = (RAW, EXT_CLIPBOARD)
    await ws.send(struct.pack(f">BxH{len(asked)}i", 2, len(asked), *asked))
    await ws.send(struct.pack(">BBHHHH", 3, 0, 0, 0, *size))
    novnc = NoVnc(ws, size)
    task = asyncio.ensure_future(novnc.run())
    try:
        yield novnc
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError, EOFError):
            await task
        ws.close()
        await poll(lambda: bool(d.events.of_type("session.ended")), 10, "session.ended")


def _switch_on(d: Desk) -> None:
    d.s.estate.update_policy(d.actor("hadmin"), "hoshi-hospital", {"clipboard_allowed": True})


def _recorded_texts(d: Desk, session_id: str) -> list[str | None]:
    _header, records = read_records(d.store.read(f"{session_id}.rfb"))
    return [extclip.text_of(data) for _ms, kind, data in records if kind == b"X"]


def _no_text_in(d: Desk, *texts: str) -> None:
    dumped = json.dumps([json.loads(e.to_json()) for e in d.events.events], ensure_ascii=False)
    for t in texts:
        assert t not in dumped


async def _pasted(display: str, text: str) -> None:
    """Until an X program on ``display`` pastes ``text`` (the instrument takes the
    browser's announcement in its own time)."""
    seen: list[str | None] = []

    async def pastes() -> bool:
        seen.append(await x_paste(display))
        return seen[-1] == text

    await poll(pastes, 15, f"{text!r} pasted on the instrument")


async def _both_ways(d: Desk, display: str, size: tuple[int, int]) -> str:
    """The instrument's copy reaches the browser, the browser's text is pasted there;
    both logged. The session's id."""
    async with served(d.app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        async with _browser(d, url, http, size) as novnc:
            await poll(lambda: bool(novnc.caps), 10, "the server's extended clipboard caps")
            assert all(c.text and c.actions & NOTIFY for c in novnc.caps)
            for m in novnc.other:  # nothing but text is named to the browser
                assert struct.unpack_from(">I", m, 8)[0] & 0xFFFF in (0, TEXT)
            [live] = d.registry.list()
            owner = await x_copy(display, JAPANESE)
            try:
                assert await asyncio.wait_for(novnc.got.get(), 15) == JAPANESE
            finally:
                await x_uncopy(owner)
            await poll(lambda: bool(d.events.of_type("file.transferred")), 5, "the copy's log")
            await novnc.paste_from(FROM_BROWSER)
            # the instrument asks for the text when an X program pastes (VNC) or as soon
            # as the browser announces it (RDP: the bridge asks at once)
            await _pasted(display, FROM_BROWSER)
            await poll(lambda: len(d.events.of_type("file.transferred")) == 2, 5, "paste log")
            assert d.registry.list() == [live]
    out, inbound = d.events.of_type("file.transferred")
    assert out.get("NetworkDirection") == "Outbound"
    assert out.get("TargetFileSize") == len(JAPANESE.encode())
    assert out.get("TargetFileSHA256") == _sha(JAPANESE)
    assert out.details == {"tool": "clipboard", "operation": "download"}
    assert inbound.get("NetworkDirection") == "Inbound"
    assert inbound.get("TargetFileSize") == len(FROM_BROWSER.encode())
    assert inbound.get("TargetFileSHA256") == _sha(FROM_BROWSER)
    assert inbound.details == {"tool": "clipboard", "operation": "upload"}
    assert not d.events.of_type("file.refused")
    _no_text_in(d, JAPANESE, FROM_BROWSER)
    assert _recorded_texts(d, live.session_id) == [JAPANESE, FROM_BROWSER]
    return live.session_id


async def test_vnc_japanese_text_crosses_both_ways_as_utf8(desk: Desk) -> None:
    _switch_on(desk)
    desk.grant()
    await _both_ways(desk, desk.xvnc.display, (800, 600))


async def test_rdp_japanese_text_crosses_both_ways_as_utf8(
    tmp_path: Path,
    xrdp_clip: Xrdp,  # noqa: F811
) -> None:
    async with pinned_desk(tmp_path, xrdp_clip, rdp_size=(800, 600)) as d:
        _switch_on(d)
        d.grant()
        await _both_ways(d, xrdp_clip.xvnc.display, (800, 600))


def _refused(d: Desk, direction: str) -> list[AuditEvent]:
    return [e for e in d.events.of_type("file.refused") if e.get("NetworkDirection") == direction]


async def _nothing_crosses(d: Desk, display: str, vnc: bool) -> None:
    async with served(d.app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        async with _browser(d, url, http, (800, 600)) as novnc:
            owner = await x_copy(display, JAPANESE)
            try:
                if vnc:  # Xvnc sends the copy as classic cut text, which the broker drops
                    await poll(lambda: _refused(d, "Outbound"), 10, "the copy's refusal")
                else:  # the RDP clipboard channel is not joined: for 3 s, nothing comes
                    # (with the switch on the copy arrives within a second)
                    await asyncio.sleep(3)
                assert novnc.caps == [] and novnc.other == [] and novnc.got.empty()
                # a browser that provides anyway: refused, not pasted
                await novnc.send(extclip.provide(FROM_BROWSER))
                await poll(lambda: _refused(d, "Inbound"), 5, "the refusal")
                assert await x_paste(display) == JAPANESE  # its own copy still
            finally:
                await x_uncopy(owner)
    if vnc:
        [dropped] = _refused(d, "Outbound")
        assert dropped.get("EventResultDetails") == "clipboard_off"
    else:
        assert not _refused(d, "Outbound")
    [refused] = _refused(d, "Inbound")
    assert refused.get("EventResultDetails") == "clipboard_off"
    assert refused.get("NetworkDirection") == "Inbound"
    assert refused.get("TargetFileSHA256") == _sha(FROM_BROWSER)
    assert not d.events.of_type("file.transferred")
    _no_text_in(d, JAPANESE, FROM_BROWSER)


async def test_vnc_with_the_clipboard_off_nothing_of_either_clipboard_crosses(desk: Desk) -> None:
    desk.grant()
    await _nothing_crosses(desk, desk.xvnc.display, vnc=True)


async def test_rdp_with_the_clipboard_off_nothing_of_either_clipboard_crosses(
    tmp_path: Path,
    xrdp_clip: Xrdp,  # noqa: F811
) -> None:
    async with pinned_desk(tmp_path, xrdp_clip, rdp_size=(800, 600)) as d:
        d.grant()
        await _nothing_crosses(d, xrdp_clip.xvnc.display, vnc=False)


def _bomb() -> bytes:
    """A provide of 256 MiB of text squeezed into a quarter of a MiB."""
    z = zlib.compressobj(9)
    body = z.compress(struct.pack(">I", (256 << 20) + 1))
    body += b"".join(z.compress(bytes(1 << 20)) for _ in range(256))
    return struct.pack(">I", PROVIDE | TEXT) + body + z.flush(zlib.Z_SYNC_FLUSH)


@pytest.mark.parametrize("protocol", ["vnc", "rdp"])
async def test_a_malformed_or_bombed_extended_message_is_refused_and_the_session_goes_on(
    tmp_path: Path,
    xrdp_clip: Xrdp,  # noqa: F811
    protocol: str,
) -> None:
    bad = struct.pack(">I", PROVIDE | TEXT) + b"this is not zlib"
    bomb = _bomb()
    display = xrdp_clip.xvnc.display
    async with contextlib.AsyncExitStack() as stack:
        if protocol == "rdp":
            d = await stack.enter_async_context(pinned_desk(tmp_path, xrdp_clip))
        else:
            d = await stack.enter_async_context(pinned_desk(tmp_path, xrdp_clip, protocol="vnc"))
        _switch_on(d)
        d.grant()
        url = await stack.enter_async_context(served(d.app))
        http = await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=30))
        async with _browser(d, url, http, (800, 600)) as novnc:
            await poll(lambda: bool(novnc.caps), 10, "the extended clipboard caps")
            [live] = d.registry.list()
            for payload in (bad, bomb):
                await novnc.ws.send(struct.pack(">Bxxxi", 6, -len(payload)) + payload)
            await poll(lambda: len(d.events.of_type("file.refused")) == 2, 10, "the refusals")
            # the session, and its clipboard, go on
            await novnc.paste_from(FROM_BROWSER)
            await _pasted(display, FROM_BROWSER)
            assert d.registry.list() == [live]
        malformed, large = d.events.of_type("file.refused")
        assert malformed.get("EventResultDetails") == "clipboard_malformed"
        assert malformed.get("TargetFileSize") == len(bad)
        assert malformed.get("TargetFileSHA256") == hashlib.sha256(bad).hexdigest()
        assert large.get("EventResultDetails") == "clipboard_too_large"
        assert large.get("TargetFileSHA256") == hashlib.sha256(bomb).hexdigest()
        assert all(e.get("NetworkDirection") == "Inbound" for e in (malformed, large))
        [moved] = d.events.of_type("file.transferred")
        assert moved.get("TargetFileSHA256") == _sha(FROM_BROWSER)


async def test_vnc_a_provide_towards_a_server_that_did_not_announce_it_goes_as_latin1(
    desk: Desk,
) -> None:
    """A browser that did not ask for the pseudo-encoding (the server then announces
    nothing) but provides extended text anyway: the broker passes it on as classic
    cut text, ISO 8859-1 with ``?`` for what it lacks, logged as what crossed."""
    d = desk
    _switch_on(d)
    d.grant()
    text = "é 検体"
    latin = "é ??".encode("latin-1")
    async with served(d.app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        d.gate.clipboard_allowed = StoreAccessPolicy(d.s).clipboard_allowed
        token = await console_sign_in(http, d, "alice")
        ws = await ws_open(url, ws_path(d.port, token), cookie=f"hoshu_session={token}", origin=url)
        await ws.rfb_handshake()
        await ws.send(struct.pack(">BxHi", 2, 1, RAW))
        await ws.send(extclip.message(6, extclip.provide(text)))
        await _pasted(d.xvnc.display, latin.decode("latin-1"))
        [live] = d.registry.list()
        ws.close()
        await poll(lambda: bool(d.events.of_type("session.ended")), 10, "session.ended")
    [moved] = d.events.of_type("file.transferred")
    assert moved.get("TargetFileSize") == len(latin)
    assert moved.get("TargetFileSHA256") == hashlib.sha256(latin).hexdigest()
    assert _recorded_texts(d, live.session_id) == [latin.decode("latin-1")]
