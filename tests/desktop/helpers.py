"""What the desktop tests share: the console sign-in and WebSocket path of a desk, the
recording exported as video read back with ffprobe/ffmpeg, and the desktop page's state
and canvas in the browser."""

from __future__ import annotations

import json
import subprocess

import httpx
from selenium import webdriver
from selenium.webdriver.common.by import By

from broker.console.web import csrf_for
from tests.control.conftest import PASSWORD
from tests.desktop.conftest import INSTRUMENT, Desk
from tests.desktop.wsclient import ws_open


async def console_sign_in(http: httpx.AsyncClient, d: Desk, name: str) -> str:
    """Sign ``name`` in to the console over ``http`` (password, TOTP code); the session
    token. The clock then moves a step, so the next sign-in gets a code of its own."""
    r = await http.post(
        "/console/login", data={"username": name, "password": PASSWORD, "totp": d.code(name)}
    )
    assert r.status_code == 303, r.text
    d.clock.advance(30)
    token = http.cookies.get("hoshu_session")
    assert token
    return token


async def refused_open(d: Desk, url: str, http: httpx.AsyncClient) -> tuple[int, str, bytes]:
    """alice opens the instrument's desktop socket, expecting it to be closed on her:
    the close code, the reason and whatever data came before it."""
    token = await console_sign_in(http, d, "alice")
    ws = await ws_open(url, ws_path(d.port, token), cookie=f"hoshu_session={token}", origin=url)
    try:
        return await ws.until_close(timeout_s=30)
    finally:
        ws.close()


def ws_path(port: int, token: str | None) -> str:
    """The desktop WebSocket's path for ``port``, with the CSRF token of ``token``'s
    session (none without a token)."""
    base = f"/console/desktop/{INSTRUMENT}/ws?port={port}"
    return base if token is None else f"{base}&csrf={csrf_for(token)}"


def probe_export(video: bytes, d: Desk) -> tuple[int, float, tuple[int, ...]]:
    """ffprobe's frame count and duration of ``video``, and the pixel at (20, 20) of its
    last frame (decoded by ffmpeg)."""
    path = d.xvnc.typed.parent / "export.mp4"
    path.write_bytes(video)
    info = json.loads(
        subprocess.run(
            [
                "ffprobe",
                "-v",
                "error",
                "-count_frames",
                "-select_streams",
                "v:0",
                "-show_entries",
                "stream=nb_read_frames,width,height:format=duration",
                "-of",
                "json",
                str(path),
            ],
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
    )
    stream = info["streams"][0]
    w, h = int(stream["width"]), int(stream["height"])
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    last = raw[-w * h * 3 :]
    at = (20 * w + 20) * 3
    return (
        int(stream["nb_read_frames"]),
        float(info["format"]["duration"]),
        tuple(last[at : at + 3]),
    )


# the RGB of the pixel at (20, 20) of the canvas noVNC draws, once it has a screen
PIXEL = """
const c = document.querySelector('#screen canvas');
if (!c || c.width < 100) { return null; }
return Array.from(c.getContext('2d').getImageData(20, 20, 1, 1).data.slice(0, 3));
"""


def desktop_state(driver: webdriver.Chrome) -> str:
    """What the desktop page says of its session (``data-state``: connecting, live, ...)."""
    return str(driver.find_element(By.ID, "desktop-state").get_attribute("data-state"))
