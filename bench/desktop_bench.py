"""Desktop sessions: a VNC desktop with a moving window, directly and through ``hoshu serve``.

The set-up is the demo's with its desktop (:class:`hoshu_demo.demo.Demo`,
``desktop=True``): ``hoshu serve`` and ``hoshu-gateway run`` as processes of their
own, and the lab's LIS workstation, a real TigerVNC ``Xvnc`` (1024x768, 32 bpp).
On that display an ``xterm`` moves itself across the screen and prints a line every
10 ms (:func:`start_mover`), so the screen changes faster than Xvnc sends updates
(TigerVNC's ``FrameRate``, 60 a second per client by default).

The client is this process and plays noVNC's part: the encodings noVNC asks for
(hoshu strikes those it does not frame, so both paths get the same list), one
full-screen request, then after each framebuffer update an incremental request for
the whole screen, for :attr:`~bench.sizes.Sizes.desktop_seconds`:

- ``desktop_fps_direct``: on a plain socket to Xvnc (VNC authentication);
- ``desktop_fps_hoshu``: console WebSocket → broker → gateway tunnel → Xvnc, after
  the engineer signed in with password and TOTP and an approver approved the port;
- ``desktop_recording_bytes_per_min``: the recording's size (``RecordingSize`` of
  ``session.ended``) over the session's length;
- ``desktop_broker_cpu_s_per_session_min`` (and the gateway's): CPU the ``hoshu
  serve`` process tree spent during the window, per session-minute;
- ``desktop_sessions_per_broker_process``: sessions opened at once in steps of
  :attr:`~bench.sizes.Sizes.desktop_session_steps`; the largest step at which every
  session still got :data:`FPS_FLOOR` frames a second.  The client, Xvnc, the
  broker and the gateway share the machine, so each one's share of a core at each
  step (``info.desktop.levels``) says which of them was the limit.

Every loop is bounded by time or count.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.concurrency import tree_cpu_s
from bench.report import Results
from bench.sizes import Sizes
from broker.console.web import csrf_for
from broker.desktop.rfb import (
    COPYRECT,
    CURSOR,
    DESKTOP_SIZE,
    EXT_DESKTOP_SIZE,
    FRAMED,
    LAST_RECT,
    RAW,
    ZRLE,
    Screen,
    ServerFramer,
    ServerInit,
    Stream,
    client_handshake,
)
from hoshu_demo.demo import DESKTOP, Demo
from labsim.desktop import XvncDesktop
from tests.desktop.wsclient import WsClient, ws_open
from tests.support.demoflow import Totp, sign_in

KEYS = [
    "desktop_fps_direct",
    "desktop_fps_hoshu",
    "desktop_stream_kB_per_s_direct",
    "desktop_stream_kB_per_s_hoshu",
    "desktop_recording_bytes_per_min",
    "desktop_broker_cpu_s_per_session_min",
    "desktop_gateway_cpu_s_per_session_min",
    "desktop_sessions_per_broker_process",
    *(f"desktop_full_frame_ms_{p}_{e}" for p in ("direct", "hoshu") for e in ("raw", "zrle")),
]
ENCODING_NAMES = {RAW: "raw", ZRLE: "zrle"}
FPS_FLOOR = 10.0  # frames a second every session must still get (a window moves smoothly)
# noVNC 1.4's SetEncodings: CopyRect, Tight, TightPNG, ZRLE, JPEG, Hextile, RRE, Raw,
# quality and compression levels, desktop size, last rect, QEMU keys, extended desktop
# size, XVP, Fence, continuous updates, desktop name, cursor
NOVNC = (COPYRECT, 7, -260, ZRLE, 21, 5, 2, RAW, -26, -254, DESKTOP_SIZE, LAST_RECT, -258,
         EXT_DESKTOP_SIZE, -309, -312, -313, -307, CURSOR)  # fmt: skip
# what hoshu lets through to Xvnc of those: the direct client asks for the same
NOVNC_THROUGH_HOSHU = tuple(e for e in NOVNC if e in FRAMED)
MOVER = """i=0
while [ $i -lt 1000000 ]; do
  i=$((i+1))
  printf '\\033[3;%d;%dt' $(( (i*7) % 600 )) $(( (i*5) % 400 ))
  echo "moving window, line $i"
  sleep 0.01
done
"""


class DesktopBenchError(Exception):
    """The desktop benchmark could not take a figure; the message says why."""


@dataclass
class Run:
    """One client's measuring window."""

    frames: int
    nbytes: int
    seconds: float

    @property
    def fps(self) -> float:
        return self.frames / self.seconds


def _encodings(codes: tuple[int, ...]) -> bytes:
    return struct.pack(f">BxH{len(codes)}i", 2, len(codes), *codes)


def _request(incremental: int, w: int, h: int) -> bytes:
    return struct.pack(">BBHHHH", 3, incremental, 0, 0, w, h)


async def novnc_loop(
    stream: Stream, send: Any, init: ServerInit, encodings: tuple[int, ...], seconds: float
) -> Run:
    """Be noVNC for ``seconds``: an incremental whole-screen request after each update."""
    framer = ServerFramer(Screen.of(init))
    await send(_encodings(encodings))
    await send(_request(0, init.width, init.height))
    frames = nbytes = 0
    t0 = time.perf_counter()
    end = t0 + seconds
    async with asyncio.timeout(seconds + 30):
        while time.perf_counter() < end:
            m = await framer.next(stream)
            nbytes += len(m.data)
            if m.kind == 0:
                frames += 1
                await send(_request(1, framer.screen.width, framer.screen.height))
    return Run(frames, nbytes, time.perf_counter() - t0)


async def full_frames(
    stream: Stream, send: Any, init: ServerInit, encoding: int, count: int
) -> float:
    """Seconds per whole screen in ``encoding``, asked for and received ``count`` times."""
    framer = ServerFramer(Screen.of(init))
    await send(_encodings((encoding,)))
    t0 = time.perf_counter()
    async with asyncio.timeout(30 + count * 5):
        for _ in range(count):
            await send(_request(0, init.width, init.height))
            while (await framer.next(stream)).kind != 0:
                pass
    return (time.perf_counter() - t0) / count


async def direct_run(
    port: int, password: str, seconds: float, full: int = 0
) -> tuple[Run, dict[int, float]]:
    """A plain RFB client on Xvnc's port (the broker's own handshake code): noVNC's loop
    for ``seconds``, then ``full`` whole screens in Raw and in ZRLE on fresh connections."""
    frame_s: dict[int, float] = {}
    run = None
    for what in ("loop", RAW, ZRLE) if full else ("loop",):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            stream = Stream(reader.read)
            init = await client_handshake(stream, writer.write, password, DESKTOP)

            async def send(data: bytes, writer: asyncio.StreamWriter = writer) -> None:
                writer.write(data)
                await writer.drain()

            if what == "loop":
                run = await novnc_loop(stream, send, init, NOVNC_THROUGH_HOSHU, seconds)
            else:
                frame_s[int(what)] = await full_frames(stream, send, init, int(what), full)
        finally:
            writer.close()
    assert run is not None
    return run, frame_s


def ws_stream(ws: WsClient) -> Stream:
    """The RFB bytes in the WebSocket's binary messages (a close frame ends them)."""

    async def read(_n: int) -> bytes:
        while True:
            op, data = await ws.frame()
            if op == 0x8:
                return b""
            if op == 0x2:  # text frames are the broker's notices
                return data

    return Stream(read)


async def open_ws(api: str, token: str, port: int) -> tuple[WsClient, ServerInit]:
    path = f"/console/desktop/{DESKTOP}/ws?port={port}&csrf={csrf_for(token)}"
    ws = await ws_open(api, path, cookie=f"hoshu_session={token}", origin=api)
    if ws.status != 101:
        raise DesktopBenchError(f"the console refused the desktop WebSocket: HTTP {ws.status}")
    return ws, ServerInit.decode(await ws.rfb_handshake())


async def hoshu_runs(api: str, token: str, port: int, n: int, seconds: float) -> list[Run]:
    """``n`` desktop sessions at once through the console, each noVNC's loop."""
    opened = [await open_ws(api, token, port) for _ in range(n)]
    try:
        return list(
            await asyncio.gather(
                *(novnc_loop(ws_stream(ws), ws.send, init, NOVNC, seconds) for ws, init in opened)
            )
        )
    finally:
        for ws, _ in opened:
            ws.close()


async def hoshu_full_frames(api: str, token: str, port: int, count: int) -> dict[int, float]:
    """Seconds per whole screen in Raw and in ZRLE through the console, one session each."""
    out: dict[int, float] = {}
    for encoding in (RAW, ZRLE):
        ws, init = await open_ws(api, token, port)
        try:
            out[encoding] = await full_frames(ws_stream(ws), ws.send, init, encoding, count)
        finally:
            ws.close()
    return out


def start_mover(display: str, workdir: Path) -> subprocess.Popen[bytes]:
    """An xterm that moves itself across the screen and prints, up to 100 times a second."""
    script = workdir / "mover.sh"
    script.write_text(MOVER)
    return subprocess.Popen(
        [
            "xterm", "-display", display, "-geometry", "60x16+0+0", "-title", "mover",
            "-xrm", "XTerm*allowWindowOps: true", "-e", "sh", str(script),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


def xvnc_pid() -> int:
    """The lab's Xvnc: this process's child of that name (the lab runs in this process)."""
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            if stat[stat.index("(") + 1 : stat.rindex(")")] == "Xvnc":
                if int(stat[stat.rindex(")") + 2 :].split()[1]) == me:
                    return int(entry)
    raise DesktopBenchError("the lab's Xvnc is not running")


def _ended(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("EventType") == "session.ended"]


def _wait_ended(log: Path, count: int, timeout_s: float = 30.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = _ended(log)
        if len(rows) >= count:
            return rows
        time.sleep(0.1)
    raise DesktopBenchError(f"only {len(_ended(log))} of {count} desktop sessions ended")


@contextlib.contextmanager
def desktop_demo(work: Path) -> Iterator[tuple[Demo, XvncDesktop, str, int]]:
    """The demo with its desktop, tanaka's approved grant on the desktop's port, a
    console sign-in cookie; and the moving window on the display."""
    demo = Demo(work / ".dd", api_port=0, ssh_port=0, tunnel_port=0, desktop=True)
    mover: subprocess.Popen[bytes] | None = None
    try:
        demo.start()
        if demo.notes:
            raise DesktopBenchError("; ".join(demo.notes))
        assert demo.lab is not None
        xvnc = demo.lab.part(DESKTOP, XvncDesktop)
        mover = start_mover(xvnc.display, work)
        codes: dict[str, Totp] = sign_in(demo, ["tanaka", "sato"])
        req = demo.hoshu(
            "tanaka", "request", DESKTOP, "--port", str(xvnc.port), "--duration", "2h",
            "--reason", "desktop benchmark", "--ticket", "BENCH-3", "--plan", "moving window",
        )  # fmt: skip
        demo.hoshu("sato", "approve", req["id"], "--comment", "benchmark")
        password = demo.describe()["users"]["tanaka"]["password"]
        r = httpx.post(
            f"{demo.api}/console/login",
            data={"username": "tanaka", "password": password, "totp": codes["tanaka"].code()},
            timeout=30,
        )
        token = r.cookies.get("hoshu_session")
        if r.status_code != 303 or not token:
            raise DesktopBenchError(f"console sign-in failed: HTTP {r.status_code}")
        yield demo, xvnc, token, xvnc.port
    finally:
        if mover is not None:
            mover.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                mover.wait(5)
        demo.stop()


def run(res: Results, sizes: Sizes, work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    seconds = sizes.desktop_seconds
    info: dict[str, Any] = {
        "set_up": "hoshu serve + hoshu-gateway run (processes of their own), lab Xvnc "
        "1024x768x32 with an xterm moving itself and printing every 10 ms; the client "
        "is the bench process, one noVNC-like loop per session",
        "seconds_per_measure": seconds,
        "fps_floor": FPS_FLOOR,
        "levels": {},
    }
    res.info["desktop"] = info
    with desktop_demo(work) as (demo, xvnc, token, port):
        vnc_password = (xvnc.dir / "vnc-password").read_text()
        broker = demo.procs["broker"].pid
        gateway = demo.procs["gateway"].pid
        xvnc_process = xvnc_pid()
        log = demo.root / "broker" / "audit" / "audit.log"
        asyncio.run(direct_run(port, vnc_password, 1.0))  # warm: Xvnc's first client
        direct, frame_s = asyncio.run(
            direct_run(port, vnc_password, seconds, sizes.desktop_full_frames)
        )
        res.put("desktop_fps_direct", direct.fps, 1)
        res.put("desktop_stream_kB_per_s_direct", direct.nbytes / direct.seconds / 1e3, 1)
        for enc, took in frame_s.items():
            res.put(f"desktop_full_frame_ms_direct_{ENCODING_NAMES[enc]}", took * 1000, 1)

        ended_before = len(_ended(log))
        b0, g0, t0 = tree_cpu_s(broker), tree_cpu_s(gateway), time.monotonic()
        [one] = asyncio.run(hoshu_runs(demo.api, token, port, 1, seconds))
        [ended] = _wait_ended(log, ended_before + 1)[ended_before:]
        wall = time.monotonic() - t0
        b1, g1 = tree_cpu_s(broker), tree_cpu_s(gateway)
        res.put("desktop_fps_hoshu", one.fps, 1)
        res.put("desktop_stream_kB_per_s_hoshu", one.nbytes / one.seconds / 1e3, 1)
        size = int(ended.get("RecordingSize") or 0)
        if size <= 0:
            raise DesktopBenchError(f"session.ended carries no recording size: {ended}")
        # open to session.ended: the session's whole length, hand-shake and close included
        res.put("desktop_recording_bytes_per_min", round(size / (wall / 60)))
        res.put("desktop_broker_cpu_s_per_session_min", (b1 - b0) / (wall / 60), 3)
        res.put("desktop_gateway_cpu_s_per_session_min", (g1 - g0) / (wall / 60), 3)

        count = sizes.desktop_full_frames
        ended_before = len(_ended(log))
        for enc, took in asyncio.run(hoshu_full_frames(demo.api, token, port, count)).items():
            res.put(f"desktop_full_frame_ms_hoshu_{ENCODING_NAMES[enc]}", took * 1000, 1)
        _wait_ended(log, ended_before + 2)

        carried = 0
        for n in sizes.desktop_session_steps:
            ended_before = len(_ended(log))
            # who spends the machine's two cores: broker, gateway, Xvnc, this client
            b0, g0, x0 = tree_cpu_s(broker), tree_cpu_s(gateway), tree_cpu_s(xvnc_process)
            c0, t0 = time.process_time(), time.monotonic()
            runs = asyncio.run(hoshu_runs(demo.api, token, port, n, seconds))
            cpu, wall = tree_cpu_s(broker) - b0, time.monotonic() - t0
            shares = {
                "gateway": (tree_cpu_s(gateway) - g0) / wall,
                "xvnc": (tree_cpu_s(xvnc_process) - x0) / wall,
                "client": (time.process_time() - c0) / wall,
            }
            _wait_ended(log, ended_before + n)
            fps = sorted(r.fps for r in runs)
            held = fps[0] >= FPS_FLOOR
            info["levels"][str(n)] = {
                "fps_min": round(fps[0], 1),
                "fps_median": round(statistics.median(fps), 1),
                "fps_total": round(sum(fps), 1),
                "broker_cpu_share_of_a_core": round(cpu / wall, 2),
                "broker_cpu_s_per_session_min": round(cpu / (n * wall / 60), 3),
                **{f"{k}_cpu_share_of_a_core": round(v, 2) for k, v in shares.items()},
                "loadavg_1min_after": round(os.getloadavg()[0], 1),
                "held": held,
            }
            print(f"[bench] desktop {n} sessions: {info['levels'][str(n)]}", flush=True)
            if not held:
                break
            carried = n
        info["sessions_criterion"] = (
            f"the largest of {list(sizes.desktop_session_steps)} sessions at once at which "
            f"every session got >= {FPS_FLOOR:g} frames/s under the moving window"
        )
        info["sessions_capped"] = carried == sizes.desktop_session_steps[-1]
        res.put("desktop_sessions_per_broker_process", carried)
