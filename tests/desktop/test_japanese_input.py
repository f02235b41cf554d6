"""What of Japanese text typed into VNC and RDP desktops reaches the instrument.

The browser's noVNC sends a key event that carries a character (an on-screen
keyboard's "検") as one keysym, key down then up: the legacy X keysym when one
exists for the character (Latin-1 one to one, full-width katakana as the ``kana_*``
keysyms 0x04a1-0x04df), else 0x01000000 + the code point.  The test sends exactly
that, using noVNC's own table (``node_modules/@novnc/novnc/core/input/keysymdef.js``),
over the console's WebSocket, into a UTF-8 ``xterm`` on a real Xvnc (directly, or
behind a real xrdp) whose shell writes what it receives to a file.

Proved here: over VNC (TigerVNC's Xvnc), kanji, full-width katakana, half-width
katakana, full-width digits and the yen sign arrive exactly, and the JIS keys
(Henkan, Muhenkan, Hiragana_Katakana, Zenkaku_Hankaku) add no stray character and
reach X as their keysyms (``xev`` on the root window).
Over RDP (xrdp 0.9's ``vnc-any`` module behind the broker's RDP client) the Japanese
text, sent as RDP Unicode keyboard events, does not arrive: xrdp 0.9 turns a Unicode
event into a key only when its keymap (US, the layout the broker announces) has the
character, and drops the others; the JIS keys add nothing either (Henkan and
Muhenkan have no key in xrdp's US keymap; Zenkaku_Hankaku and Hiragana_Katakana are
not sent: on the US layout their scancodes are the backquote and a launcher key),
and typing goes on.  An instrument set to the Japanese keyboard (``ja-JP``) is
announced as one (layout 0x0411, JIS keyboard type; xrdp loads its Japanese keymap):
every ASCII sign, and ¥, arrives exactly whatever Shift the browser sent (none, a US
browser's, a JIS browser's; the same holds with ``en-US``), the JIS keys go as their
own scancodes, and of the Japanese text only ¥ arrives (xrdp's Japanese keymap has no
kana or kanji).  In headless Chromium on the console page, key events that
carry Japanese characters arrive exactly over VNC, and text an IME commits into the
page (no key events) does not arrive at all.  The limits are in ``docs/desktop.md``
("Keyboard").
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import string
import struct
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement

from broker.desktop.keyboards import LAYOUTS
from tests.console.browsing import browser_sign_in
from tests.console.conftest import (
    browser,  # noqa: F401  (fixture)
    screenshot,
)
from tests.desktop.conftest import (
    GREEN,
    INSTRUMENT,
    VNC_PASSWORD,
    Desk,
    Xrdp,
    Xvnc,
    _free_port,
    pinned_desk,
)
from tests.desktop.helpers import PIXEL, console_sign_in, desktop_state, ws_path
from tests.desktop.rfbscreen import Screen, is_green, screen_until
from tests.desktop.wsclient import WsClient, ws_open
from tests.support import poll
from tests.support.served import served

KEYSYMDEF = Path(__file__).parents[2] / "node_modules/@novnc/novnc/core/input/keysymdef.js"
# a specimen comment as hospital staff type it: kanji, full-width katakana (legacy
# kana keysyms), half-width katakana and full-width digits (Unicode keysyms), yen
JAPANESE = "検体ケンタイｹﾝﾀｲ１２３¥"
RETURN = 0xFF0D
# a JIS keyboard's own keys: Henkan, Muhenkan, Hiragana_Katakana, Zenkaku_Hankaku
JIS_KEYS = [0xFF23, 0xFF22, 0xFF27, 0xFF2A]


@cache
def _novnc_codepoints() -> dict[int, int]:
    """noVNC's table of code points that have a legacy keysym."""
    assert KEYSYMDEF.exists(), "run npm ci (./run does): noVNC's keysym table is missing"
    table = {
        int(u, 16): int(k, 16)
        for u, k in re.findall(r"^\s*(0x[0-9a-f]+):\s*(0x[0-9a-f]+),", KEYSYMDEF.read_text(), re.M)
    }
    assert len(table) > 600, "noVNC's keysym table was not read"
    return table


def novnc_keysym(ch: str) -> int:
    """The keysym noVNC's ``keysyms.lookup`` sends for the character ``ch``."""
    u = ord(ch)
    if 0x20 <= u <= 0xFF:
        return u
    return _novnc_codepoints().get(u, 0x01000000 | u)


def test_the_keysyms_sent_are_novncs() -> None:
    """The test types what noVNC sends: Unicode keysyms for kanji, half-width katakana
    and full-width digits, the legacy kana keysyms for full-width katakana."""
    assert [hex(novnc_keysym(c)) for c in "検ケｹ１¥"] == [
        "0x100691c",
        "0x4b9",
        "0x100ff79",
        "0x100ff11",
        "0xa5",
    ]


@pytest.fixture
def xvnc(tmp_path: Path) -> Iterator[Xvnc]:
    """Xvnc on a loopback port (VNC authentication) showing a UTF-8 xterm (green) whose
    shell writes what is typed to ``typed.txt``; replaces the shared fixture here so
    the terminal is UTF-8 whatever the test runner's locale."""
    assert shutil.which("Xvnc") and shutil.which("vncpasswd") and shutil.which("xterm"), (
        "install tigervnc-standalone-server, tigervnc-tools and xterm (./run does)"
    )
    assert shutil.which("xev"), "install x11-utils (xterm's recommended package): xev"
    pwfile = tmp_path / "vncpasswd"
    pwfile.write_bytes(
        subprocess.run(
            ["vncpasswd", "-f"], input=VNC_PASSWORD.encode(), capture_output=True, check=True
        ).stdout
    )
    port = _free_port()
    r, w = os.pipe()
    server = subprocess.Popen(
        [
            *("Xvnc", "-displayfd", str(w), "-rfbport", str(port), "-localhost"),
            *("-interface", "127.0.0.1", "-SecurityTypes", "VncAuth", "-PasswordFile", str(pwfile)),
            *("-geometry", "800x600", "-depth", "24", "-AlwaysShared", "-nolisten", "tcp"),
        ],
        pass_fds=(w,),
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "xvnc.log", "wb"),
    )
    os.close(w)
    with os.fdopen(r) as f:
        number = f.readline().strip()
    assert number, (tmp_path / "xvnc.log").read_text()
    display = f":{number}"
    typed = tmp_path / "typed.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LC_")}
    env["LANG"] = "C.UTF-8"
    term = subprocess.Popen(
        [
            *("xterm", "-u8", "-display", display, "-geometry", "120x45+0+0"),
            *("-bg", "#00a000", "-fg", "white", "-e", "sh", "-c", f"stty -echo; cat > {typed}"),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # the keys that reach the root window (where the pointer is outside the xterm)
    keys = subprocess.Popen(
        ["stdbuf", "-oL", "xev", "-display", display, "-root", "-event", "keyboard"],
        stdout=open(tmp_path / "keys.txt", "wb"),
        stderr=subprocess.DEVNULL,
    )
    try:
        yield Xvnc(port, display, typed)
    finally:
        for p in (keys, term, server):
            p.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(5)
            if p.poll() is None:
                p.kill()


async def _open(d: Desk, url: str, http: httpx.AsyncClient) -> tuple[WsClient, Screen]:
    """The engineer's desktop, as noVNC opens it, once the xterm's green is shown."""
    token = await console_sign_in(http, d, "alice")
    ws = await ws_open(url, ws_path(d.port, token), cookie=f"hoshu_session={token}", origin=url)
    assert ws.status == 101
    init = await ws.rfb_handshake()
    w, h = struct.unpack(">HH", init[:4])
    await ws.send(struct.pack(">BxHi", 2, 1, 0))  # SetEncodings: Raw
    await ws.send(struct.pack(">BBHHHH", 3, 0, 0, 0, w, h))
    screen = Screen(w, h)
    await screen_until(ws, screen, lambda: is_green(screen.rgb(20, 20)), 20)
    return ws, screen


async def _keys_at_the_root(ws: WsClient, xvnc: Xvnc, keysyms: list[int]) -> list[int]:
    """The keysyms X reports pressed on the root window when ``keysyms`` are typed with
    the pointer moved off the xterm, then "x" (the end marker, not returned)."""
    await ws.send(struct.pack(">BBHH", 5, 0, 795, 595))  # PointerEvent: bottom right
    await _type(ws, [*keysyms, ord("x")])
    log = xvnc.typed.parent / "keys.txt"

    def pressed() -> list[int]:
        text = log.read_text(errors="replace") if log.exists() else ""
        events = text.split("KeyPress event")[1:]
        return [int(m, 16) for e in events for m in re.findall(r"keysym (0x[0-9a-f]+)", e)[:1]]

    await poll(lambda: 0x78 in pressed(), 10, "the end marker at the root window")
    return pressed()[: pressed().index(0x78)]


async def _type(ws: WsClient, keysyms: list[int]) -> None:
    """Each keysym down then up, as noVNC sends key events that carry characters."""
    for sym in keysyms:
        await ws.send(struct.pack(">BBxxI", 4, 1, sym))
        await ws.send(struct.pack(">BBxxI", 4, 0, sym))


def _text(typed: Path) -> str:
    return typed.read_bytes().decode("utf-8", "replace") if typed.exists() else ""


async def test_japanese_characters_and_jis_keys_reach_a_vnc_instrument_exactly(desk: Desk) -> None:
    """A specimen comment (ASCII, then Japanese characters, as noVNC sends them)
    arrives exactly; the JIS keys (sent as their keysyms) add no character of their
    own and reach X as those keysyms."""
    d = desk
    d.grant()
    async with served(d.app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        ws, _ = await _open(d, url, http)
        # ASCII first: Xvnc 1.12 gives the first two keysyms its layout lacks the same
        # spare keycode when they are the X server's very first keys, and the xterm then
        # reads the first as the second (docs/desktop.md, "Keyboard")
        line = [ord(c) for c in "No.5 "] + [novnc_keysym(c) for c in JAPANESE]
        await _type(ws, line + JIS_KEYS + [novnc_keysym(c) for c in "ｹﾝ"] + [RETURN])
        typed = d.xvnc.typed
        await poll(lambda: _text(typed).endswith("\n"), 10, "the typed line on the instrument")
        assert _text(typed) == "No.5 " + JAPANESE + "ｹﾝ\n"
        # the JIS keys reach X as their keysyms
        assert await _keys_at_the_root(ws, d.xvnc, JIS_KEYS) == JIS_KEYS
        ws.close()


async def test_over_xrdp_japanese_text_and_the_jis_keys_add_nothing_and_typing_goes_on(
    tmp_path: Path, xrdp: Xrdp
) -> None:
    """xrdp 0.9 drops the Unicode events the Japanese text becomes (its US keymap has no
    key for them) and the JIS keys (two are not sent: they would be a backquote and a
    launcher key); nothing stray is typed or pressed, and the session goes on."""
    async with pinned_desk(tmp_path, xrdp) as d:
        d.grant()
        async with served(d.app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
            ws, _ = await _open(d, url, http)
            typed = xrdp.xvnc.typed
            # Japanese text goes out as RDP Unicode events; xrdp 0.9 has no key for them
            await _type(ws, [novnc_keysym(c) for c in JAPANESE] + [RETURN])
            await poll(lambda: _text(typed).endswith("\n"), 10, "the line's end on the instrument")
            assert _text(typed) == "\n"
            # the JIS keys: Henkan and Muhenkan have no key in xrdp's US keymap;
            # Zenkaku_Hankaku and Hiragana_Katakana are not sent
            await _type(ws, [*JIS_KEYS, RETURN])
            await poll(lambda: _text(typed).count("\n") == 2, 10, "the JIS keys' line")
            assert _text(typed) == "\n\n"
            # nor does X see them as keys
            assert await _keys_at_the_root(ws, xrdp.xvnc, JIS_KEYS) == []
            # the session goes on: text as PC keys still arrives (pointer back on the xterm)
            await ws.send(struct.pack(">BBHH", 5, 0, 400, 300))
            await _type(ws, [ord(c) for c in "ok"] + [RETURN])
            await poll(lambda: _text(typed).count("\n") == 3, 10, "the third line")
            assert _text(typed) == "\n\nok\n"
            [live] = d.registry.list()  # the session is still up
            assert live.port == xrdp.port
            ws.close()


# the signs a JIS keyboard has on other keys than a US one, and the others
SIGNS = "@[]:;^\\_|\"'()=~{}+*<>?`!#$%&-,./"
# what needs Shift on each keyboard (a browser of that layout sends Shift_L around it)
US_SHIFTED = set(string.ascii_uppercase + '~!@#$%^&*()_+{}|:"<>?')
JIS_SHIFTED = set(string.ascii_uppercase + "!\"#$%&'()=~|`{+*}<>?_")
XF86_LAUNCH6 = 0x1008FF46


def _announced(xrdp: Xrdp) -> str:
    """What xrdp logged of the keyboard the RDP client announced."""
    log = (xrdp.xvnc.typed.parent / f"xrdp-{xrdp.port}.log").read_text(errors="replace")
    [line] = [x for x in log.splitlines() if "Keyboard information sent by the RDP client" in x]
    return line.split("client, ")[1]


async def _type_as(ws: WsClient, text: str, shifted: set[str], shift_up_first: bool) -> None:
    """``text`` typed as a browser of a layout whose keys need Shift for ``shifted``
    sends it: Shift_L down around each such character, let go before the character's
    release (``shift_up_first``) or after it; the rest down then up."""
    for c in text:
        sym = novnc_keysym(c)
        if c not in shifted:
            await _type(ws, [sym])
            continue
        await ws.send(struct.pack(">BBxxI", 4, 1, 0xFFE1))
        await ws.send(struct.pack(">BBxxI", 4, 1, sym))
        order = [0xFFE1, sym] if shift_up_first else [sym, 0xFFE1]
        for up in order:
            await ws.send(struct.pack(">BBxxI", 4, 0, up))


@pytest.mark.parametrize(
    ("layout", "announced", "text"),
    [
        ("ja-JP", "keyboard_type:[0x07], keyboard_subtype:[0x02], keylayout:[0x00000411]", "¥"),
        ("en-US", "keyboard_type:[0x04], keyboard_subtype:[0x00], keylayout:[0x00000409]", ""),
    ],
)
async def test_over_xrdp_every_sign_arrives_exactly_whatever_shift_the_browser_sent(
    tmp_path: Path, xrdp: Xrdp, layout: str, announced: str, text: str
) -> None:
    """The instrument's keyboard layout is announced (xrdp loads its keymap), and ASCII
    text with all the signs (and ¥ on a Japanese keyboard) arrives exactly when typed as
    the page's text field sends it (no Shift at all), as a US browser does and as a
    Japanese (JIS) browser does, Shift let go before or after the key."""
    async with pinned_desk(tmp_path, xrdp, keyboard_layout=layout) as d:
        d.grant()
        async with served(d.app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
            ws, _ = await _open(d, url, http)
            assert _announced(xrdp) == announced
            log = (tmp_path / f"xrdp-{xrdp.port}.log").read_text()
            assert (
                f"Loading keymap file /etc/xrdp/km-0000{LAYOUTS[layout].layout_id:04x}.ini" in log
            )
            line = "No.5 Ab " + SIGNS + text + " 0189"
            typed = xrdp.xvnc.typed
            await _type(ws, [novnc_keysym(c) for c in line] + [RETURN])  # the text field
            await _type_as(ws, line, US_SHIFTED, shift_up_first=False)  # a US browser
            await _type(ws, [RETURN])
            await _type_as(ws, line, JIS_SHIFTED, shift_up_first=True)  # a JIS browser
            await _type(ws, [RETURN])
            await poll(lambda: _text(typed).count("\n") == 3, 15, "the three lines")
            assert _text(typed).splitlines() == [line] * 3
            ws.close()


async def test_over_xrdp_with_a_japanese_keyboard_the_jis_keys_are_keys_and_kana_is_dropped(
    tmp_path: Path, xrdp: Xrdp
) -> None:
    """With ja-JP, the JIS keys go as their scancodes and type nothing: X sees Henkan,
    Muhenkan and Zenkaku_Hankaku, and for Hiragana/Katakana (0x70) xrdp 0.9's Japanese
    keymap has XF86Launch6.  Of the Japanese text (Unicode events) only ¥ arrives: xrdp's
    0411 keymap has no kana or kanji."""
    async with pinned_desk(tmp_path, xrdp, keyboard_layout="ja-JP") as d:
        d.grant()
        async with served(d.app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
            ws, _ = await _open(d, url, http)
            typed = xrdp.xvnc.typed
            await _type(ws, [ord(c) for c in "No.5 "] + [novnc_keysym(c) for c in JAPANESE])
            await _type(ws, [*JIS_KEYS, RETURN])
            await poll(lambda: _text(typed).endswith("\n"), 10, "the line on the instrument")
            assert _text(typed) == "No.5 ¥\n"
            pressed = await _keys_at_the_root(ws, xrdp.xvnc, JIS_KEYS)
            assert pressed == [0xFF23, 0xFF22, XF86_LAUNCH6, 0xFF2A]
            ws.close()


async def _desktop_page(d: Desk, browser: webdriver.Chrome, url: str) -> WebElement:  # noqa: F811
    """alice signed in, the instrument's desktop page live with its green xterm; its
    canvas."""
    await asyncio.to_thread(browser_sign_in, browser, url, "alice", d.code("alice"))
    d.clock.advance(30)
    await asyncio.to_thread(browser.get, f"{url}/console/desktop/{INSTRUMENT}?port={d.port}")
    await poll(
        lambda: asyncio.to_thread(lambda: desktop_state(browser) == "live"), 15, "the desktop"
    )
    await poll(
        lambda: asyncio.to_thread(lambda: browser.execute_script(PIXEL) == list(GREEN)),
        15,
        "the instrument's green xterm on the page",
    )
    canvas: WebElement = await asyncio.to_thread(
        browser.find_element, By.CSS_SELECTOR, "#screen canvas"
    )
    return canvas


async def test_in_chromium_keys_carrying_japanese_reach_a_vnc_instrument_ime_commits_do_not(
    desk: Desk,
    browser: webdriver.Chrome,  # noqa: F811
) -> None:
    """The console page in headless Chromium: key events that carry a Japanese
    character (as an on-screen keyboard sends them) go through noVNC and arrive
    exactly; text an IME composes and commits into the page (Chromium's
    ``Input.imeSetComposition`` and ``Input.insertText``) does not arrive at all:
    noVNC listens to key events on its canvas, which is no text field."""
    d = desk
    d.grant()
    async with served(d.app) as url:
        canvas = await _desktop_page(d, browser, url)
        size = canvas.size

        def type_on_the_page() -> None:
            # the pointer over the xterm (X focus follows it), ASCII keys first (see above)
            webdriver.ActionChains(browser).move_to_element_with_offset(
                canvas, 30 - size["width"] // 2, 30 - size["height"] // 2
            ).click().send_keys("No.5 ").perform()
            for c in JAPANESE:
                browser.execute_cdp_cmd(
                    "Input.dispatchKeyEvent", {"type": "keyDown", "key": c, "text": c}
                )
                browser.execute_cdp_cmd("Input.dispatchKeyEvent", {"type": "keyUp", "key": c})
            # an IME's composition, then its commit
            composing = {"text": "けんたい", "selectionStart": 4, "selectionEnd": 4}
            browser.execute_cdp_cmd("Input.imeSetComposition", composing)
            browser.execute_cdp_cmd("Input.insertText", {"text": "検体"})
            webdriver.ActionChains(browser).send_keys("/" + Keys.ENTER).perform()

        await asyncio.to_thread(type_on_the_page)
        typed = d.xvnc.typed
        await poll(lambda: _text(typed).endswith("\n"), 10, "the typed line on the instrument")
        assert _text(typed) == "No.5 " + JAPANESE + "/\n"


async def test_in_chromium_an_ime_commit_in_the_text_field_is_typed_on_the_instrument(
    desk: Desk,
    browser: webdriver.Chrome,  # noqa: F811
) -> None:
    """What an IME composes and commits into the page's text field (Chromium's
    ``Input.imeSetComposition`` then ``Input.insertText``, as a Japanese IME does) and
    is sent reaches the instrument exactly, and the keys pressed on the screen after
    it follow it there; the field is empty again and the screen has the keys."""
    d = desk
    d.grant()
    async with served(d.app) as url:
        canvas = await _desktop_page(d, browser, url)
        size = canvas.size

        def type_on_the_page() -> None:
            webdriver.ActionChains(browser).move_to_element_with_offset(
                canvas, 30 - size["width"] // 2, 30 - size["height"] // 2
            ).click().send_keys("No.5 ").perform()
            field = browser.find_element(By.ID, "text-to-send")
            assert field.is_displayed()
            field.click()
            composing = {"text": "けんたい", "selectionStart": 4, "selectionEnd": 4}
            browser.execute_cdp_cmd("Input.imeSetComposition", composing)
            browser.execute_cdp_cmd("Input.insertText", {"text": "検体ｹﾝﾀｲ"})
            assert field.get_attribute("value") == "検体ｹﾝﾀｲ"
            browser.find_element(By.CSS_SELECTOR, "#text-input button[type=submit]").click()
            assert field.get_attribute("value") == ""
            webdriver.ActionChains(browser).send_keys("/" + Keys.ENTER).perform()

        await asyncio.to_thread(type_on_the_page)
        typed = d.xvnc.typed
        await poll(lambda: _text(typed).endswith("\n"), 10, "the typed line on the instrument")
        assert _text(typed) == "No.5 検体ｹﾝﾀｲ/\n"
        # the page as the engineer sees it, for docs/desktop.md
        lang = await asyncio.to_thread(
            lambda: browser.find_element(By.TAG_NAME, "html").get_attribute("lang")
        )
        await asyncio.to_thread(screenshot, browser, f"desktop-{lang}")
