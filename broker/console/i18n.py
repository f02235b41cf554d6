"""The console's languages: one message catalog per language, the choice, local times.

Every string a page shows comes from ``messages/<lang>.json`` (``ja`` first, ``en``)
and from the area catalogs ``messages/<area>.<lang>.json`` beside it (one per group
of pages, so each can grow on its own); a key defined twice is refused.  Both
languages hold the same keys (a test checks it).  The language is the
``hoshu_lang`` cookie when it names a catalog, else the best match of the browser's
``Accept-Language``, else Japanese.  A key missing from a catalog raises at
render time rather than showing the raw key.  Times are shown in the
organisation's time zone (the hospital policy's ``timezone``, Asia/Tokyo by
default) as ``YYYY-MM-DD HH:MM`` with the zone's abbreviation.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import cache
from importlib import resources
from zoneinfo import ZoneInfo

LANGS: tuple[str, ...] = ("ja", "en")
DEFAULT_LANG = "ja"
DEFAULT_TZ = "Asia/Tokyo"
LANG_COOKIE = "hoshu_lang"


@cache
def catalog(lang: str) -> dict[str, str]:
    """The message catalog of ``lang`` (one of :data:`LANGS`): the main file and every
    area file of that language, merged."""
    if lang not in LANGS:
        raise KeyError(f"no message catalog for {lang!r}")
    folder = resources.files("broker.console").joinpath("messages")
    areas = sorted(f.name for f in folder.iterdir() if f.name.endswith(f".{lang}.json"))
    names = [f"{lang}.json", *areas]
    merged: dict[str, str] = {}
    for name in names:
        data = json.loads(folder.joinpath(name).read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise ValueError(f"messages/{name} must map keys to strings")
        twice = sorted(merged.keys() & data.keys())
        if twice:
            raise ValueError(f"messages/{name} defines keys defined already: {twice[:5]}")
        merged.update(data)
    return merged


class Messages:
    """One language's strings for one page: ``t("inbox.title")``, ``t("x", n=2)``."""

    def __init__(self, lang: str) -> None:
        self.lang = lang
        self.strings = catalog(lang)

    def __call__(self, key: str, **values: object) -> str:
        text = self.strings[key]  # a missing key is a bug: never show the raw key
        return text.format(**values) if values else text


def negotiate(cookie: str | None, accept_language: str | None) -> str:
    """The language to show: the cookie's, else the browser's best, else Japanese."""
    if cookie in LANGS:
        return cookie
    best: tuple[float, str] | None = None
    for item in (accept_language or "")[:500].split(","):
        tag, _, params = item.strip().partition(";")
        primary = tag.strip().lower().split("-")[0]
        if primary not in LANGS:
            continue
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                continue
        if best is None or q > best[0]:
            best = (q, primary)
    return best[1] if best else DEFAULT_LANG


def zone(name: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(name or DEFAULT_TZ)
    except (ValueError, KeyError):
        return ZoneInfo(DEFAULT_TZ)


def local_time(at: datetime | None, tz: ZoneInfo) -> str:
    """``2026-03-02 10:00 JST``; an empty string for no time."""
    if at is None:
        return ""
    return at.astimezone(tz).strftime("%Y-%m-%d %H:%M %Z")
