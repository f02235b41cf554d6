"""RFB's Extended Clipboard messages as hoshu reads and writes them: text only, UTF-8,
every message checked whole, and a provide inflated no further than the bound."""

from __future__ import annotations

import struct
import time
import tracemalloc
import zlib

import pytest

from broker.desktop import extclip
from broker.desktop.extclip import (
    CAPS,
    NOTIFY,
    PEEK,
    PROVIDE,
    REQUEST,
    TEXT,
    Clip,
    ClipboardRefused,
    encode,
    parse,
)

RTF, HTML, DIB = 1 << 1, 1 << 2, 1 << 3
JAPANESE = "検体ケンタイ１２３"


def _zlib(data: bytes) -> bytes:
    z = zlib.compressobj()
    return z.compress(data) + z.flush(zlib.Z_SYNC_FLUSH)


def _provide(*parts: bytes, formats: int = TEXT) -> bytes:
    return struct.pack(">I", PROVIDE | formats) + _zlib(
        b"".join(struct.pack(">I", len(p)) + p for p in parts)
    )


def test_caps_name_text_alone_and_keep_its_size() -> None:
    """A server's caps offering text, rtf, html and dib: only text is passed on."""
    sent = struct.pack(
        ">IIIII", CAPS | REQUEST | NOTIFY | PROVIDE | TEXT | RTF | HTML | DIB, 0, 7, 9, 0
    )
    clip = parse(sent)
    assert clip == Clip(CAPS, True, CAPS | REQUEST | NOTIFY | PROVIDE, 0)
    assert encode(clip) == struct.pack(">II", CAPS | REQUEST | NOTIFY | PROVIDE | TEXT, 0)
    # caps without text name no format; a text size past the bound is held to it
    assert encode(parse(struct.pack(">II", CAPS | NOTIFY | RTF, 5))) == struct.pack(
        ">I", CAPS | NOTIFY
    )
    assert parse(struct.pack(">II", CAPS | TEXT, 1 << 31), max_text=100).text_size == 100


def test_notify_request_and_peek_keep_only_whether_text_is_named() -> None:
    assert parse(struct.pack(">I", NOTIFY | TEXT | HTML)) == Clip(NOTIFY, True)
    assert encode(Clip(NOTIFY, True)) == struct.pack(">I", NOTIFY | TEXT)
    assert parse(struct.pack(">I", REQUEST | RTF)) == Clip(REQUEST, False)
    assert parse(struct.pack(">I", PEEK)) == Clip(PEEK)
    assert encode(Clip(NOTIFY)) == struct.pack(">I", NOTIFY)  # "nothing copied"


def test_a_provide_carries_utf8_text_with_crlf_and_its_nul_and_reads_back_with_lf() -> None:
    clip = extclip.provide(JAPANESE + "\nline 2")
    payload = encode(clip)
    (flags,) = struct.unpack_from(">I", payload)
    assert flags == PROVIDE | TEXT
    inner = zlib.decompressobj().decompress(payload[4:])
    body = (JAPANESE + "\r\nline 2").encode() + b"\0"
    assert inner == struct.pack(">I", len(body)) + body
    assert parse(payload) == clip
    assert clip.utf8 == (JAPANESE + "\nline 2").encode()


def test_a_provide_of_text_rtf_and_html_gives_the_text_alone() -> None:
    text = (JAPANESE + "\r\n").encode() + b"\0"
    payload = _provide(text, b"{\\rtf1 x}", b"<b>x</b>", formats=TEXT | RTF | HTML)
    clip = parse(payload)
    assert clip.data == JAPANESE + "\n"
    assert struct.unpack_from(">I", encode(clip))[0] == PROVIDE | TEXT
    # rtf alone: no text, nothing to relay
    assert parse(_provide(b"{\\rtf1 x}", formats=RTF)).data is None


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"\0\0", "shorter than its flags"),
        (struct.pack(">I", NOTIFY | PEEK), "one action"),
        (struct.pack(">I", 1 << 30 | TEXT), "unknown action"),
        (struct.pack(">I", 0), "one action"),
        (struct.pack(">III", CAPS | TEXT | RTF, 0, 0)[:-1], "caps of 2 formats"),
        (struct.pack(">II", NOTIFY | TEXT, 0), "8 bytes where 4"),
        (struct.pack(">I", PROVIDE | TEXT) + b"not zlib at all", "does not inflate"),
        (struct.pack(">I", PROVIDE | TEXT) + _zlib(struct.pack(">I", 10) + b"abc"), "ends early"),
        (_provide(b"no nul"), "NUL"),
        (_provide(b"two\0nuls\0"), "NUL"),
        (_provide(b"\xff\xfe latin\0"), "not UTF-8"),
        (
            struct.pack(">I", PROVIDE | TEXT) + _zlib(struct.pack(">I", 3) + b"ok\0more"),
            "data past",
        ),
    ],
    ids=[
        "short",
        "two-actions",
        "unknown-action",
        "no-action",
        "caps-sizes-short",
        "notify-with-data",
        "not-zlib",
        "inflates-short",
        "no-nul",
        "inner-nul",
        "not-utf8",
        "trailing-data",
    ],
)
def test_a_message_that_does_not_parse_is_refused_as_malformed(payload: bytes, why: str) -> None:
    with pytest.raises(ClipboardRefused, match=why) as caught:
        parse(payload)
    assert caught.value.reason == "clipboard_malformed"


def test_a_zlib_bomb_is_refused_without_being_inflated() -> None:
    """256 MiB of zeros squeezed into a quarter of a MiB: its size alone refuses it; one
    that claims a small text and hides the rest after it is inflated one byte past."""

    def bomb(head: bytes) -> bytes:
        z = zlib.compressobj(9)
        zeros = bytes(1 << 20)
        body = z.compress(head) + b"".join(z.compress(zeros) for _ in range(256))
        return struct.pack(">I", PROVIDE | TEXT) + body + z.flush(zlib.Z_SYNC_FLUSH)

    honest = bomb(struct.pack(">I", 256 << 20))
    lying = bomb(struct.pack(">I", 3) + b"ok\0")
    assert len(honest) < 1 << 20 and len(lying) < 1 << 20
    for payload, reason in ((honest, "clipboard_too_large"), (lying, "clipboard_malformed")):
        tracemalloc.start()
        began = time.monotonic()
        with pytest.raises(ClipboardRefused) as caught:
            parse(payload)
        took = time.monotonic() - began
        _now, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert caught.value.reason == reason
        assert peak < 4 << 20 and took < 1.0, (peak, took)


def test_a_text_past_the_bound_is_refused_as_too_large_and_one_at_it_passes() -> None:
    fits = b"x" * 99 + b"\0"
    assert parse(_provide(fits), max_text=99).data == "x" * 99
    with pytest.raises(ClipboardRefused) as caught:
        parse(_provide(b"x" * 100 + b"\0"), max_text=99)
    assert caught.value.reason == "clipboard_too_large"
    # other formats count towards the bound too
    with pytest.raises(ClipboardRefused) as caught:
        parse(_provide(b"ok\0", b"r" * 200, formats=TEXT | RTF), max_text=99)
    assert caught.value.reason == "clipboard_too_large"


def test_a_recorded_cut_text_gives_its_text_classic_or_extended() -> None:
    classic = struct.pack(">BxxxI", 3, 3) + "é?a".encode("latin-1")
    assert extclip.text_of(classic) == "é?a"
    assert extclip.text_of(extclip.message(6, extclip.provide(JAPANESE))) == JAPANESE
    assert extclip.text_of(extclip.message(3, Clip(NOTIFY, True))) is None
