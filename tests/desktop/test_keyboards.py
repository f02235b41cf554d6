"""The PC keyboards the broker types on over RDP (broker.desktop.keyboards): which key
and Shift state each character is, checked against xrdp's own keymaps, and what is
sent when the browser's Shift is not the one the instrument's keyboard needs."""

from __future__ import annotations

import re
import string
from pathlib import Path

import pytest

from broker.access.estate import KEYBOARD_LAYOUTS
from broker.desktop.keyboards import LAYOUTS, Keyboard, key_for

KEYMAPS = {"en-US": Path("/etc/xrdp/km-00000409.ini"), "ja-JP": Path("/etc/xrdp/km-00000411.ini")}
SHIFT_L, SHIFT_R = 0xFFE1, 0xFFE2
SIGNS = "@[]:;^\\_|\"'()=~{}+*<>?"


def _keymap(path: Path) -> dict[tuple[str, int], int]:
    """xrdp's keymap: (section, X keycode) -> the character's code point (0: none)."""
    assert path.exists(), "install xrdp (./run does): its keymaps are missing"
    table: dict[tuple[str, int], int] = {}
    section = ""
    for line in path.read_text().splitlines():
        if m := re.fullmatch(r"\[(\w+)\]", line.strip()):
            section = m.group(1)
        elif m := re.fullmatch(r"Key(\d+)=(\d+):(\d+)", line.strip()):
            table[(section, int(m.group(1)))] = int(m.group(3))
    assert len(table) > 700, f"{path} was not read"
    return table


def test_the_layouts_are_the_ones_an_instrument_can_be_set_to() -> None:
    assert tuple(LAYOUTS) == KEYBOARD_LAYOUTS
    us, jp = LAYOUTS["en-US"], LAYOUTS["ja-JP"]
    assert (us.layout_id, us.kind, us.subtype, us.function_keys) == (0x0409, 4, 0, 12)
    assert (jp.layout_id, jp.kind, jp.subtype, jp.function_keys) == (0x0411, 7, 2, 12)


@pytest.mark.parametrize("name", KEYBOARD_LAYOUTS)
def test_every_printable_ascii_character_is_the_key_xrdps_keymap_has_it_on(name: str) -> None:
    """Each of the 95 printable ASCII characters, on its key with its Shift state (a
    letter lower case unshifted, upper case shifted), is that character in xrdp's
    keymap of the layout (xrdp's X keycode of a scancode below 0x80 is the scancode + 8)."""
    keymap = _keymap(KEYMAPS[name])
    chars = LAYOUTS[name].chars
    assert set(chars) == set(string.printable[:95])
    wrong = {}
    for char, (code, shift) in chars.items():
        states = [False, True] if shift is None and char.isalpha() else [bool(shift)]
        for state in states:
            want = (char.upper() if state else char.lower()) if char.isalpha() else char
            got = keymap.get(("shift" if state else "noshift", code + 8), 0)
            if got != ord(want):
                wrong[(char, hex(code), state)] = chr(got) if got else None
    assert wrong == {}


def test_signs_sit_on_their_jis_keys() -> None:
    jp = LAYOUTS["ja-JP"].chars
    assert {c: jp[c] for c in "@[]:^\\"} == {
        "@": (0x1A, False),
        "[": (0x1B, False),
        "]": (0x2B, False),
        ":": (0x28, False),
        "^": (0x0D, False),
        "\\": (0x73, False),
    }
    assert {c: jp[c] for c in "\"'()=_|"} == {
        '"': (0x03, True),
        "'": (0x08, True),
        "(": (0x09, True),
        ")": (0x0A, True),
        "=": (0x0C, True),
        "_": (0x73, True),
        "|": (0x7D, True),
    }
    assert key_for(0xA5, LAYOUTS["ja-JP"]) == "¥"  # Unicode: Windows' JIS ¥ key types "\"


def test_the_jis_keys_go_as_their_own_scancodes_only_on_a_japanese_keyboard() -> None:
    jp, us = LAYOUTS["ja-JP"], LAYOUTS["en-US"]
    # Zenkaku_Hankaku, Henkan, Muhenkan, Hiragana_Katakana (and noVNC's other names)
    assert [key_for(k, jp) for k in (0xFF2A, 0xFF23, 0xFF22, 0xFF27)] == [
        (0x29, False),
        (0x79, False),
        (0x7B, False),
        (0x70, False),
    ]
    assert {key_for(k, jp) for k in (0xFF28, 0xFF29)} == {(0x29, False)}
    assert {key_for(k, jp) for k in (0xFF24, 0xFF25, 0xFF26, 0xFF2E)} == {(0x70, False)}
    # on US 0x29 is the backquote and 0x70 a launcher key: not sent
    assert key_for(0xFF2A, us) is None and key_for(0xFF27, us) is None
    assert key_for(0xFF23, us) == (0x79, False)


def test_a_sign_typed_with_the_browsers_shift_the_instrument_needs_goes_as_its_key() -> None:
    """A Japanese browser's Shift+2 is '"': on JIS that is Shift+2 as well."""
    kb = Keyboard(LAYOUTS["ja-JP"])
    assert kb.events(SHIFT_L, True) == [(0x2A, False, True)]
    assert kb.events(ord('"'), True) == [(0x03, False, True)]
    assert kb.events(ord('"'), False) == [(0x03, False, False)]
    assert kb.events(SHIFT_L, False) == [(0x2A, False, False)]
    assert kb.events(ord("@"), True) == [(0x1A, False, True)]


def test_a_sign_needing_no_shift_is_sent_with_the_held_shift_let_go_around_it() -> None:
    """A US browser's '@' is Shift+2; on JIS '@' is the unshifted 0x1A: both held Shift
    keys go up around it and down again, at its press and at its release, so the server
    reads '@' at both."""
    kb = Keyboard(LAYOUTS["ja-JP"])
    kb.events(SHIFT_L, True)
    kb.events(SHIFT_R, True)
    around = [(0x2A, False, False), (0x36, False, False)]
    back = [(0x2A, False, True), (0x36, False, True)]
    assert kb.events(ord("@"), True) == [*around, (0x1A, False, True), *back]
    assert kb.events(ord("@"), False) == [*around, (0x1A, False, False), *back]


def test_a_sign_needing_shift_is_sent_with_a_left_shift_around_it() -> None:
    """The page's text field sends '"' with no Shift at all; a Japanese browser's '@' has
    none either, and on US it is Shift+2.  A release after the browser's Shift went up
    gets the same Shift as its press."""
    jp = Keyboard(LAYOUTS["ja-JP"])
    assert jp.events(ord('"'), True) == [
        (0x2A, False, True),
        (0x03, False, True),
        (0x2A, False, False),
    ]
    us = Keyboard(LAYOUTS["en-US"])
    assert us.events(ord("@"), True) == [
        (0x2A, False, True),
        (0x03, False, True),
        (0x2A, False, False),
    ]
    us.events(SHIFT_L, True)
    assert us.events(ord('"'), True) == [(0x28, False, True)]
    us.events(SHIFT_L, False)
    assert us.events(ord('"'), False) == [
        (0x2A, False, True),
        (0x28, False, False),
        (0x2A, False, False),
    ]


def test_letters_follow_their_case_and_caps_lock_as_sent() -> None:
    kb = Keyboard(LAYOUTS["ja-JP"])
    assert kb.events(ord("a"), True) == [(0x1E, False, True)]
    assert kb.events(ord("A"), True) == [
        (0x2A, False, True),
        (0x1E, False, True),
        (0x2A, False, False),
    ]
    kb.events(0xFFE5, True)  # Caps Lock on
    kb.events(0xFFE5, False)
    assert kb.events(ord("A"), True) == [(0x1E, False, True)]
    kb.events(SHIFT_L, True)  # Shift with Caps Lock: lower case
    assert kb.events(ord("a"), True) == [(0x1E, False, True)]


def test_characters_without_a_key_go_as_unicode_with_a_held_shift_let_go() -> None:
    kb = Keyboard(LAYOUTS["ja-JP"])
    assert kb.events(0x01000000 + ord("検"), True) == [("検", True)]
    kb.events(SHIFT_L, True)
    assert kb.events(0x04B9, True) == [(0x2A, False, False), ("ケ", True), (0x2A, False, True)]
    assert kb.events(0xFE03, True) == []  # ISO_Level3_Shift: nothing
