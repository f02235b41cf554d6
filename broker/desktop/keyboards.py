"""The PC keyboard the broker types on over RDP: a US one, or a Japanese (JIS 106/109).

The engineer's noVNC sends X keysyms; an RDP server takes PC scancodes (what keys
of the keyboard the client announced were pressed) or Unicode keyboard events.  An
instrument's ``keyboard_layout`` (:data:`broker.access.estate.KEYBOARD_LAYOUTS`) says
which keyboard the broker announces in the client core data and the input
capabilities (MS-RDPBCGR 2.2.1.3.2 ``TS_UD_CS_CORE``, 2.2.7.1.6): ``en-US`` is layout
0x0409 on keyboard type 4 (IBM enhanced, 101/102 keys), ``ja-JP`` layout 0x0411 on
type 7 (Japanese), subtype 2 (106/109 keys), each with 12 function keys.

**Signs sit on other keys on JIS**: ``@`` is its own key (0x1A), ``"`` is Shift+2,
``:`` has a key (0x28), ``¥`` (0x7D) and the ro key (0x73: ``\\`` and ``_``) are
keys a US keyboard lacks.  :data:`LAYOUTS` holds, for each layout, the key and the
Shift state of each printable ASCII character; the tests check both tables against
xrdp's own keymaps (``/etc/xrdp/km-00000409.ini``, ``km-00000411.ini``).

**Shift.** The browser sends Shift as keys of their own (``Shift_L`` down, ``"``,
``Shift_L`` up), pressed for the engineer's own layout, which need not be the
instrument's: a US browser types ``@`` as Shift+2, and on JIS ``@`` takes no Shift.
:class:`Keyboard` follows the Shift keys it has sent; a sign whose key needs the
other Shift state is sent with the Shift keys let go around it (``@`` with Shift
held: Shift up, 0x1A down, Shift down again) or with a left Shift pressed around it
(``"`` without: Shift down, 0x03 down, Shift up), its release the same way, so the
server reads the same character at press and release (xrdp computes an X keysym
from the scancode and its own Shift state at each event, and the X server behind
it ignores a release that names another keysym than the press).  A Unicode event
is not used for these: xrdp 0.9 turns one into its keymap's scancode *without*
letting a held Shift go (``xrdp_wm_key_unicode``), so ``@`` with Shift held would
type the backquote.  Letters follow the same rule, their Shift state being the
case asked for turned over by Caps Lock as the broker has sent it (each Caps Lock
press toggles it, as xrdp counts it; a session starts with it off): "A" with
neither Shift nor Caps Lock, as the page's text field sends it, is Shift+A.  The
same rule holds for ``en-US`` (a Japanese browser's ``@``, no Shift, is Shift+2 on
US).

Characters no key of the layout gives (``¥`` too: Windows' JIS layout types
U+005C on the ¥ key, and xrdp's Japanese keymap maps U+00A5 to that key itself)
go as Unicode keyboard events, with a held Shift let go around them.

**The JIS keys** go as their own scancodes with ``ja-JP``: Zenkaku/Hankaku 0x29,
Henkan 0x79, Muhenkan 0x7B, Hiragana/Katakana 0x70 (and the keysyms noVNC sends for
them on Windows: Zenkaku, Hankaku, Romaji, Kana_Shift).  With ``en-US`` only Henkan
and Muhenkan go: on a US keyboard 0x29 is the backquote and 0x70 a launcher key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from broker.desktop.keysyms import LEGACY

SHIFT_L, SHIFT_R = 0x2A, 0x36
CAPS_LOCK = 0x3A

# one RDP keyboard event: (scancode, extended, pressed) or (character, pressed)
Scan = tuple[int, bool, bool]
Char = tuple[str, bool]
Event = Scan | Char

# keysym -> (scancode, extended), the same on both keyboards
_COMMON: dict[int, tuple[int, bool]] = {
    0xFF08: (0x0E, False),  # BackSpace
    0xFF09: (0x0F, False),  # Tab
    0xFF0D: (0x1C, False),  # Return
    0xFF1B: (0x01, False),  # Escape
    0xFFFF: (0x53, True),  # Delete
    0xFF50: (0x47, True),  # Home
    0xFF51: (0x4B, True),  # Left
    0xFF52: (0x48, True),  # Up
    0xFF53: (0x4D, True),  # Right
    0xFF54: (0x50, True),  # Down
    0xFF55: (0x49, True),  # Page_Up
    0xFF56: (0x51, True),  # Page_Down
    0xFF57: (0x4F, True),  # End
    0xFF63: (0x52, True),  # Insert
    0xFF67: (0x5D, True),  # Menu
    0xFF8D: (0x1C, True),  # KP_Enter
    0xFFE1: (SHIFT_L, False),  # Shift_L
    0xFFE2: (SHIFT_R, False),  # Shift_R
    0xFFE3: (0x1D, False),  # Control_L
    0xFFE4: (0x1D, True),  # Control_R
    0xFFE5: (CAPS_LOCK, False),  # Caps_Lock
    0xFFE9: (0x38, False),  # Alt_L
    0xFFEA: (0x38, True),  # Alt_R
    0xFFEB: (0x5B, True),  # Super_L
    0xFFEC: (0x5C, True),  # Super_R
    # Henkan and Muhenkan: keys of their own on JIS, and no other key's on US
    0xFF23: (0x79, False),  # Henkan
    0xFF22: (0x7B, False),  # Muhenkan
}
_COMMON.update({0xFFBE + i: (0x3B + i, False) for i in range(10)})  # F1..F10
_COMMON.update({0xFFC8: (0x57, False), 0xFFC9: (0x58, False)})  # F11, F12

_JIS_KEYS: dict[int, tuple[int, bool]] = {
    0xFF2A: (0x29, False),  # Zenkaku_Hankaku
    0xFF28: (0x29, False),  # Zenkaku (noVNC's name for that key in one IME state)
    0xFF29: (0x29, False),  # Hankaku (and in the other)
    0xFF27: (0x70, False),  # Hiragana_Katakana
    0xFF25: (0x70, False),  # Hiragana
    0xFF26: (0x70, False),  # Katakana
    0xFF24: (0x70, False),  # Romaji (noVNC on Windows, for the Hiragana/Katakana key)
    0xFF2E: (0x70, False),  # Kana_Shift (noVNC elsewhere, for KanaMode)
}


def _chars(rows: list[tuple[str, str, list[int]]]) -> dict[str, tuple[int, bool | None]]:
    """Printable ASCII -> (scancode, Shift): each row's keys unshifted and shifted (a
    space: that key types nothing so); letters' Shift is None (their case and Caps
    Lock's say)."""
    out: dict[str, tuple[int, bool | None]] = {" ": (0x39, None)}
    for plain, shifted, codes in rows:
        for a, b, code in zip(plain, shifted, codes, strict=True):
            if a.isalpha():
                out[a] = out[b] = (code, None)
                continue
            if a != " ":
                out[a] = (code, False)
            if b != " ":
                out[b] = (code, True)
    return out


def _run(first: int, n: int) -> list[int]:
    return list(range(first, first + n))


US_CHARS = _chars(
    [
        ("1234567890-=", "!@#$%^&*()_+", _run(0x02, 12)),
        ("qwertyuiop[]", "QWERTYUIOP{}", _run(0x10, 12)),
        ("asdfghjkl;'`", 'ASDFGHJKL:"~', _run(0x1E, 12)),
        ("\\", "|", [0x2B]),
        ("zxcvbnm,./", "ZXCVBNM<>?", _run(0x2C, 10)),
    ]
)
# JIS: Shift+0 types nothing; the yen key's unshifted ¥ goes as Unicode (see above)
JIS_CHARS = _chars(
    [
        ("1234567890-^", "!\"#$%&'() =~", _run(0x02, 12)),
        (" ", "|", [0x7D]),
        ("qwertyuiop@[", "QWERTYUIOP`{", _run(0x10, 12)),
        ("asdfghjkl;:]", "ASDFGHJKL+*}", [*_run(0x1E, 11), 0x2B]),
        ("zxcvbnm,./\\", "ZXCVBNM<>?_", [*_run(0x2C, 10), 0x73]),
    ]
)


@dataclass(frozen=True)
class Layout:
    """One keyboard as the broker announces it and types on it."""

    name: str
    layout_id: int  # keyboardLayout (a Windows input locale id)
    kind: int  # keyboardType
    subtype: int  # keyboardSubType
    function_keys: int  # keyboardFunctionKey
    keys: Mapping[int, tuple[int, bool]] = field(repr=False)  # keysym -> (scancode, ext)
    chars: Mapping[str, tuple[int, bool | None]] = field(repr=False)


LAYOUTS: Mapping[str, Layout] = MappingProxyType(
    {
        "en-US": Layout("en-US", 0x0409, 4, 0, 12, MappingProxyType(_COMMON), US_CHARS),
        "ja-JP": Layout(
            "ja-JP", 0x0411, 7, 2, 12, MappingProxyType({**_COMMON, **_JIS_KEYS}), JIS_CHARS
        ),
    }
)


def key_for(keysym: int, layout: Layout = LAYOUTS["en-US"]) -> tuple[int, bool] | str | None:
    """What an RFB keysym is on the instrument's keyboard: a (scancode, extended) key,
    a character to send as an RDP Unicode event, or None (not sent)."""
    if keysym in layout.keys:
        return layout.keys[keysym]
    if 0x20 <= keysym <= 0x7E:
        char = chr(keysym)
        return (layout.chars[char][0], False) if char in layout.chars else char
    if 0xA0 <= keysym <= 0xFF:  # Latin-1 keysyms are their code points
        return chr(keysym)
    if keysym in LEGACY:  # e.g. full-width katakana, which noVNC sends as kana_* keysyms
        return LEGACY[keysym]
    if 0x01000100 <= keysym <= 0x0110FFFF:  # Unicode keysyms (what an IME's text is)
        return chr(keysym - 0x01000000)
    return None


class Keyboard:
    """The RDP keyboard events of each browser key event, for one session: it follows
    the Shift keys it has sent (see the module docstring)."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.shifts: list[int] = []  # the Shift scancodes held down on the server
        self.caps = False  # Caps Lock, as the presses sent toggled it

    def events(self, keysym: int, down: bool) -> list[Event]:
        """What to send for ``keysym`` going down (or up); empty: nothing (no key)."""
        what = key_for(keysym, self.layout)
        if what is None:
            return []
        if isinstance(what, str):
            return self._around(self.shifts, [(what, down)], False)
        code, extended = what
        if code in (SHIFT_L, SHIFT_R) and not extended:
            if down and code not in self.shifts:
                self.shifts.append(code)
            elif not down and code in self.shifts:
                self.shifts.remove(code)
            return [(code, False, down)]
        if code == CAPS_LOCK and not extended and down:
            self.caps = not self.caps
        shift: bool | None = None  # the Shift state the key needs; None: either
        if 0x20 <= keysym <= 0x7E:
            char = chr(keysym)
            shift = self.layout.chars[char][1]
            if shift is None and char.isalpha():
                shift = char.isupper() != self.caps
        key: list[Event] = [(code, extended, down)]
        if shift is None or shift == bool(self.shifts):
            return key
        if shift:
            return self._around([SHIFT_L], key, True)
        return self._around(self.shifts, key, False)

    @staticmethod
    def _around(shifts: list[int], inner: list[Event], press: bool) -> list[Event]:
        """``inner`` with ``shifts`` pressed (``press``) or let go around it."""
        before: list[Event] = [(s, False, press) for s in shifts]
        after: list[Event] = [(s, False, not press) for s in shifts]
        return [*before, *inner, *after]


__all__ = ["LAYOUTS", "Keyboard", "Layout", "key_for"]
