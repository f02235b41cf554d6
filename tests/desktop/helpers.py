"""What the desktop tests share: the console sign-in and WebSocket path of a desk, the
recording exported as video read back with ffprobe/ffmpeg, the desktop page's state
and canvas in the browser, and xrdp with its clipboard (chansrv) and the X clipboard
of the instrument's display."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
from selenium import webdriver
from selenium.webdriver.common.by import By

from broker.console.web import csrf_for
from labsim.rdp import XRDP_INI
from tests.control.conftest import PASSWORD
from tests.desktop.conftest import INSTRUMENT, Desk, Xvnc
from tests.desktop.wsclient import ws_open
from tests.support import poll_sync


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


# --- the RDP clipboard: xrdp's chansrv on the instrument's X display ----------------

CHANSRV_SOCKETS = Path("/run/xrdp/sockdir")  # where xrdp-chansrv listens (built in)
# an X program that owns the CLIPBOARD selection with argv[1] until it is stopped, as
# an application on the instrument does after its user copied (Tk, in the venv)
_X_OWN = (
    "import sys, tkinter\n"
    "r = tkinter.Tk(); r.withdraw(); r.clipboard_clear(); r.clipboard_append(sys.argv[1])\n"
    "r.update(); print('owned', flush=True); r.mainloop()\n"
)
# what an application on the instrument pastes from the CLIPBOARD selection
_X_READ = (
    "import sys, tkinter\n"
    "r = tkinter.Tk(); r.withdraw()\n"
    "try:\n"
    "    sys.stdout.write(repr(r.clipboard_get()))\n"
    "except tkinter.TclError:\n"
    "    sys.stdout.write('None')\n"
)


def start_chansrv(workdir: Path, display: str) -> subprocess.Popen[bytes]:
    """Debian's ``xrdp-chansrv`` (xrdp's channel server: the clipboard) on the X
    ``display``, as xrdp-sesman would start it; returns once its socket is there."""
    assert shutil.which("xrdp-chansrv"), "install xrdp, which has xrdp-chansrv (./run does)"
    CHANSRV_SOCKETS.mkdir(parents=True, exist_ok=True)
    number = display.lstrip(":")
    socket_path = CHANSRV_SOCKETS / f"xrdp_chansrv_socket_{number}"
    env = dict(os.environ, DISPLAY=display, HOME=str(workdir), CHANSRV_LOG_PATH=str(workdir))
    proc = subprocess.Popen(
        ["xrdp-chansrv"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    poll_sync(lambda: socket_path.exists() or proc.poll() is not None, 10, "chansrv's socket")
    assert proc.poll() is None, "xrdp-chansrv ended at once"
    return proc


def start_xrdp_with_clipboard(
    workdir: Path, xvnc: Xvnc, port: int, name: str, channels: tuple[str, ...] = ("cliprdr",)
) -> subprocess.Popen[bytes]:
    """The lab's xrdp (:data:`labsim.rdp.XRDP_INI`) with its ``channels`` (the
    clipboard, by default) allowed and handed to the chansrv of ``xvnc``'s display
    (``chansrvport=DISPLAY(n)``)."""
    ini = workdir / f"xrdp-{port}.ini"
    text = XRDP_INI.format(
        port=port,
        cert=workdir / f"{name}.crt",
        key=workdir / f"{name}.key",
        log=workdir / f"xrdp-{port}.log",
        vnc_port=xvnc.port,
        security="tls",
    )
    text = text.replace("allow_channels=false", "allow_channels=true")
    for channel in channels:
        text = text.replace(f"{channel}=false", f"{channel}=true")
    ini.write_text(text + f"chansrvport=DISPLAY({xvnc.display.lstrip(':')})\n")
    return subprocess.Popen(
        ["xrdp", "--nodaemon", "--config", str(ini)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def x_copy(display: str, text: str) -> asyncio.subprocess.Process:
    """An X program on ``display`` that has copied ``text`` (owns CLIPBOARD) until
    :func:`x_uncopy`; returns once it owns it.  Run beside the event loop: the broker
    may be asked for the text's formats while it starts."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _X_OWN,
        text,
        env=dict(os.environ, DISPLAY=display),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    assert await asyncio.wait_for(proc.stdout.readline(), 20) == b"owned\n"
    return proc


async def x_uncopy(proc: asyncio.subprocess.Process) -> None:
    """Stop the X program of :func:`x_copy` (killed if it does not end within 5 s)."""
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def x_paste(display: str) -> str | None:
    """What an X program on ``display`` pastes from CLIPBOARD (None: nothing copied).
    Run beside the event loop: the broker itself may have to answer for the text."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _X_READ,
        env=dict(os.environ, DISPLAY=display),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    value = ast.literal_eval(out.decode())
    assert value is None or isinstance(value, str)
    return value


def stop(*procs: subprocess.Popen[bytes]) -> None:
    """Stop the programs a test started (killed if they do not end within 5 s)."""
    for p in procs:
        p.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(5)
        if p.poll() is None:
            p.kill()
            p.wait(5)
