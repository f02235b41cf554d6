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

**RDP** (``desktop_rdp_*``, :func:`rdp_run`): the demo's analyzer PC, Debian's
``xrdp`` in front of an Xvnc of its own (1024x768), with the same moving xterm on
that Xvnc's display.  The hoshu side is the same noVNC-like loop through the
console: the broker is the RDP client (aardwolf) and serves RFB
(:mod:`broker.desktop.rdpbridge`).  The direct side is the broker's own RDP client
(:func:`broker.desktop.rdpclient.connect`) on a plain socket to xrdp, counting the
RDP bitmap update PDUs (fast and slow path) it receives a second: the rate at which
xrdp gives an RDP client changed screen areas, which is what the bridge can forward.
RDP has no whole-screen request, so the whole-screen time is hoshu's only (Raw, the
encoding the bridge sends noVNC; it comes from the broker's copy of the screen).

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
from broker.desktop.rdpclient import RdpError, RdpSession, certificate_fingerprint
from broker.desktop.rdpclient import connect as rdp_connect
from broker.desktop.rfb import (
    COPYRECT,
    CURSOR,
    DESKTOP_SIZE,
    EXT_DESKTOP_SIZE,
    FRAMED,
    LAST_RECT,
    RAW,
    ZLIB,
    ZRLE,
    Screen,
    ServerFramer,
    ServerInit,
    Stream,
    client_handshake,
)
from broker.desktop.session import RDP_SIZE
from hoshu_demo.demo import DESKTOP, RDP_DESKTOP, Demo
from labsim.desktop import XvncDesktop
from labsim.rdp import USERNAME as RDP_USERNAME
from labsim.rdp import XrdpDesktop
from labsim.rdp import certificate_fingerprint as lab_fingerprint
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
RDP_KEYS = [
    "desktop_rdp_updates_per_s_direct",
    "desktop_rdp_updates_per_s_hoshu",
    "desktop_rdp_recording_MB_per_min",
    "desktop_rdp_broker_cpu_s_per_session_min",
    "desktop_rdp_gateway_cpu_s_per_session_min",
    "desktop_rdp_sessions_at_10fps",
    "desktop_rdp_full_frame_ms_hoshu_raw",
]
ENCODING_NAMES = {RAW: "raw", ZRLE: "zrle"}
SAMPLER = Path(__file__).resolve().parent / "sampler"
_FASTPATH_BITMAP = 0x1  # FASTPATH_UPDATETYPE_BITMAP (MS-RDPBCGR 2.2.9.1.2.1)
FPS_FLOOR = 10.0  # frames a second every session must still get (a window moves smoothly)
# the console's noVNC (1.7) SetEncodings without WebCodecs H.264: CopyRect, Tight,
# TightPNG, ZRLE, JPEG, Hextile, RRE, Zlib, Raw, quality and compression levels, desktop
# size, last rect, QEMU keys, extended desktop size, XVP, Fence, continuous updates,
# desktop name, cursor
NOVNC = (COPYRECT, 7, -260, ZRLE, 21, 5, 2, ZLIB, RAW, -26, -254, DESKTOP_SIZE, LAST_RECT,
         -258, EXT_DESKTOP_SIZE, -309, -312, -313, -307, CURSOR)  # fmt: skip
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


async def open_ws(
    api: str, token: str, port: int, name: str = DESKTOP
) -> tuple[WsClient, ServerInit]:
    path = f"/console/desktop/{name}/ws?port={port}&csrf={csrf_for(token)}"
    ws = await ws_open(api, path, cookie=f"hoshu_session={token}", origin=api)
    if ws.status != 101:
        raise DesktopBenchError(f"the console refused the desktop WebSocket: HTTP {ws.status}")
    return ws, ServerInit.decode(await ws.rfb_handshake())


async def hoshu_runs(
    api: str,
    token: str,
    port: int,
    n: int,
    seconds: float,
    name: str = DESKTOP,
    together: bool = False,
) -> list[Run]:
    """``n`` desktop sessions at once through the console, each noVNC's loop; the
    sessions are opened one after the other, or with ``together`` all at once (an RDP
    session takes seconds to open, and a WebSocket not read meanwhile misses the
    server's keepalive pings)."""
    if together:
        opened = list(await asyncio.gather(*(open_ws(api, token, port, name) for _ in range(n))))
    else:
        opened = [await open_ws(api, token, port, name) for _ in range(n)]
    try:
        return list(
            await asyncio.gather(
                *(novnc_loop(ws_stream(ws), ws.send, init, NOVNC, seconds) for ws, init in opened)
            )
        )
    finally:
        for ws, _ in opened:
            ws.close()


async def hoshu_full_frames(
    api: str,
    token: str,
    port: int,
    count: int,
    name: str = DESKTOP,
    encodings: tuple[int, ...] = (RAW, ZRLE),
) -> dict[int, float]:
    """Seconds per whole screen in each of ``encodings`` through the console, one
    session each."""
    out: dict[int, float] = {}
    for encoding in encodings:
        ws, init = await open_ws(api, token, port, name)
        try:
            out[encoding] = await full_frames(ws_stream(ws), ws.send, init, encoding, count)
        finally:
            ws.close()
    return out


@dataclass
class RdpRun:
    """The direct RDP client's measuring window."""

    updates: int  # bitmap update PDUs decoded
    rects: int  # the rectangles they carried
    pixels: int  # and their pixels
    seconds: float


def count_bitmap_updates(session: RdpSession) -> list[int]:
    """A counter (``[n]``) of the RDP bitmap update PDUs ``session`` receives from now
    on, fast path and slow path; the session's rectangles are those PDUs' contents.
    Hooks the two places :mod:`broker.desktop.rdpclient` takes bitmaps from aardwolf."""
    count = [0]
    # the bench counts what the client decodes: aardwolf's own attributes
    conn: Any = session._conn  # noqa: SLF001
    reassembler = conn._RDPConnection__fastpath_reassembler  # noqa: SLF001
    feed = reassembler.feed

    def fast(update: Any) -> Any:
        whole = feed(update)
        if whole is not None and int(whole.updateCode) == _FASTPATH_BITMAP:
            count[0] += 1
        return whole

    reassembler.feed = fast
    mcs = conn._RDPConnection__joined_channels["MCS"]  # noqa: SLF001
    take = mcs.process_channel_data

    async def slow(data: bytes) -> None:
        # share data PDU (type 7), PDUTYPE2_UPDATE (0x02), UPDATETYPE_BITMAP (1)
        if (
            data is not None
            and len(data) >= 22
            and struct.unpack_from("<H", data, 2)[0] & 0x0F == 7
        ):
            if data[14] == 0x02 and struct.unpack_from("<H", data, 18)[0] == 0x0001:
                count[0] += 1
        await take(data)

    mcs.process_channel_data = slow
    return count


async def rdp_direct_run(
    port: int, password: str, fingerprint: str, seconds: float, warm_s: float = 1.0
) -> RdpRun:
    """The broker's RDP client (:func:`broker.desktop.rdpclient.connect`, TLS, the
    certificate checked against the lab's) on a plain socket to xrdp, at the size the
    broker asks for: bitmap updates and rectangles for ``seconds`` after ``warm_s``."""

    async def check(der: bytes) -> None:
        if certificate_fingerprint(der) != fingerprint:
            raise RdpError("certificate_changed", "not the lab's xrdp certificate")

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    session = await rdp_connect(
        reader,
        writer,
        username=RDP_USERNAME,
        password=password,
        width=RDP_SIZE[0],
        height=RDP_SIZE[1],
        check_certificate=check,
    )
    try:
        count = count_bitmap_updates(session)
        rects = pixels = 0
        t0 = time.perf_counter()
        start, end = t0 + warm_s, t0 + warm_s + seconds
        measuring = False
        while (now := time.perf_counter()) < end:
            if not measuring and now >= start:
                measuring, count[0], rects, pixels, t0 = True, 0, 0, 0, now
            try:
                rect = await asyncio.wait_for(session.next(), max(0.01, end - now))
            except TimeoutError:
                break
            if rect is None:
                raise DesktopBenchError("xrdp ended the direct RDP session")
            rects += 1
            pixels += rect.width * rect.height
        return RdpRun(count[0], rects, pixels, time.perf_counter() - t0)
    finally:
        await session.close()


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


def child_pid(program: str, arg: str | None = None) -> int:
    """The lab's ``program`` (this process's child of that name, the lab runs in this
    process), the one with ``arg`` among its arguments if given."""
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            if stat[stat.index("(") + 1 : stat.rindex(")")] != program:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) != me:
                continue
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            if arg is None or arg.encode() in argv:
                return int(entry)
    raise DesktopBenchError(f"the lab's {program} is not running")


def xvnc_pid(port: int | None = None) -> int:
    """The lab's Xvnc (the one serving ``port`` if given)."""
    return child_pid("Xvnc", None if port is None else str(port))


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


@dataclass
class Desks:
    """The running demo, the console sign-in cookie, and its two desktops."""

    demo: Demo
    token: str
    xvnc: XvncDesktop
    port: int  # Xvnc's, granted
    xrdp: XrdpDesktop | None  # the analyzer PC, with its xrdp port granted


def _grant(demo: Demo, name: str, port: int) -> None:
    req = demo.hoshu(
        "tanaka", "request", name, "--port", str(port), "--duration", "2h",
        "--reason", "desktop benchmark", "--ticket", "BENCH-3", "--plan", "moving window",
    )  # fmt: skip
    demo.hoshu("sato", "approve", req["id"], "--comment", "benchmark")


def sampler_env(profile: Path) -> dict[str, str]:
    """The broker's environment for the bench's sampling profiler (:mod:`bench.sampler`):
    ``profile.<pid>.json`` per Python process the demo starts."""
    path = [str(SAMPLER), str(SAMPLER.parent.parent), os.environ.get("PYTHONPATH", "")]
    return {"PYTHONPATH": os.pathsep.join(p for p in path if p), "BENCH_SAMPLE_OUT": str(profile)}


@contextlib.contextmanager
def desktop_demo(work: Path, *, rdp: bool = True, profile: Path | None = None) -> Iterator[Desks]:
    """The demo with its desktops, tanaka's approved grants on the VNC desktop's port
    (and with ``rdp`` the RDP desktop's), a console sign-in cookie; and the moving
    window on each display.  With ``profile`` the broker runs under the sampler."""
    env = sampler_env(profile) if profile is not None else {}
    demo = Demo(work / ".dd", api_port=0, ssh_port=0, tunnel_port=0, desktop=True, broker_env=env)
    movers: list[subprocess.Popen[bytes]] = []
    try:
        demo.start()
        if demo.notes:
            raise DesktopBenchError("; ".join(demo.notes))
        assert demo.lab is not None
        xvnc = demo.lab.part(DESKTOP, XvncDesktop)
        xrdp = demo.lab.part(RDP_DESKTOP, XrdpDesktop) if rdp else None
        movers.append(start_mover(xvnc.display, work))
        if xrdp is not None:
            movers.append(start_mover(xrdp.vnc.display, work))
        codes: dict[str, Totp] = sign_in(demo, ["tanaka", "sato"])
        _grant(demo, DESKTOP, xvnc.port)
        if xrdp is not None:
            _grant(demo, RDP_DESKTOP, xrdp.port)
        password = demo.describe()["users"]["tanaka"]["password"]
        r = httpx.post(
            f"{demo.api}/console/login",
            data={"username": "tanaka", "password": password, "totp": codes["tanaka"].code()},
            timeout=30,
        )
        token = r.cookies.get("hoshu_session")
        if r.status_code != 303 or not token:
            raise DesktopBenchError(f"console sign-in failed: HTTP {r.status_code}")
        yield Desks(demo, token, xvnc, xvnc.port, xrdp)
    finally:
        for mover in movers:
            mover.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                mover.wait(5)
        demo.stop()


def run(
    res: Results,
    sizes: Sizes,
    work: Path,
    *,
    vnc: bool = True,
    rdp: bool = True,
    profile: Path | None = None,
) -> None:
    """The VNC part (section ``desktop``) and the RDP part (``desktop rdp``) on one demo."""
    work.mkdir(parents=True, exist_ok=True)
    with desktop_demo(work, rdp=rdp, profile=profile) as desks:
        if vnc:
            res.section("desktop", KEYS, lambda: vnc_run(res, sizes, work, desks))
        if rdp:
            res.section("desktop rdp", RDP_KEYS, lambda: rdp_run(res, sizes, desks))


def _levels(
    sizes: Sizes,
    info: dict[str, Any],
    log: Path,
    what: str,
    cpus: dict[str, int],
    opened: Any,
    ended_timeout_s: float = 30.0,
) -> int:
    """The concurrent-sessions ramp: ``opened(n)`` runs ``n`` sessions at once; each
    step's rates and each process's share of a core go in ``info["levels"]``.  The
    largest step at which every session got :data:`FPS_FLOOR` updates a second."""
    carried = 0
    for n in sizes.desktop_session_steps:
        ended_before = len(_ended(log))
        # who spends the machine's two cores: broker, gateway, the desktop, this client
        before = {k: tree_cpu_s(pid) for k, pid in cpus.items()}
        c0, t0 = time.process_time(), time.monotonic()
        runs: list[Run] = opened(n)
        wall = time.monotonic() - t0
        spent = {k: tree_cpu_s(pid) - before[k] for k, pid in cpus.items()}
        spent["client"] = time.process_time() - c0
        fps = sorted(r.fps for r in runs)
        held = fps[0] >= FPS_FLOOR
        info["levels"][str(n)] = {
            "fps_min": round(fps[0], 1),
            "fps_median": round(statistics.median(fps), 1),
            "fps_total": round(sum(fps), 1),
            "broker_cpu_share_of_a_core": round(spent["broker"] / wall, 2),
            "broker_cpu_s_per_session_min": round(spent["broker"] / (n * wall / 60), 3),
            **{
                f"{k}_cpu_share_of_a_core": round(v / wall, 2)
                for k, v in spent.items()
                if k != "broker"
            },
            "loadavg_1min_after": round(os.getloadavg()[0], 1),
            "held": held,
        }
        print(f"[bench] {what} {n} sessions: {info['levels'][str(n)]}", flush=True)
        t1 = time.monotonic()
        _wait_ended(log, ended_before + n, ended_timeout_s)
        info["levels"][str(n)]["all_ended_s"] = round(time.monotonic() - t1, 1)
        if not held:
            break
        carried = n
    info["sessions_criterion"] = (
        f"the largest of {list(sizes.desktop_session_steps)} sessions at once at which "
        f"every session got >= {FPS_FLOOR:g} frames/s under the moving window"
    )
    info["sessions_capped"] = carried == sizes.desktop_session_steps[-1]
    return carried


def vnc_run(res: Results, sizes: Sizes, work: Path, desks: Desks) -> None:
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
    demo, xvnc, token, port = desks.demo, desks.xvnc, desks.token, desks.port
    vnc_password = (xvnc.dir / "vnc-password").read_text()
    broker = demo.procs["broker"].pid
    gateway = demo.procs["gateway"].pid
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

    cpus = {"broker": broker, "gateway": gateway, "xvnc": xvnc_pid(port)}
    carried = _levels(
        sizes,
        info,
        log,
        "desktop",
        cpus,
        lambda n: asyncio.run(hoshu_runs(demo.api, token, port, n, seconds)),
    )
    res.put("desktop_sessions_per_broker_process", carried)


def rdp_run(res: Results, sizes: Sizes, desks: Desks) -> None:
    """The RDP desktop: the broker's RDP client straight to xrdp, then the noVNC-like
    loop through the console's RDP bridge; one session, whole screens, the ramp."""
    xrdp = desks.xrdp
    if xrdp is None:
        raise DesktopBenchError("the RDP desktop was not started")
    seconds = sizes.desktop_seconds
    info: dict[str, Any] = {
        "set_up": "the demo's analyzer PC: Debian xrdp (TLS, vnc-any) in front of its own "
        f"Xvnc 1024x768 with the same moving xterm; RDP desktop {RDP_SIZE[0]}x{RDP_SIZE[1]}; "
        "hoshu: the noVNC-like loop through the console's RDP bridge; direct: the "
        "broker's RDP client (broker.desktop.rdpclient, aardwolf) on a plain socket to "
        "xrdp, counting the bitmap update PDUs it receives",
        "seconds_per_measure": seconds,
        "fps_floor": FPS_FLOOR,
        "levels": {},
    }
    res.info["desktop_rdp"] = info
    demo, token, port = desks.demo, desks.token, xrdp.port
    password = (xrdp.dir / "vnc-password").read_text()
    fingerprint = lab_fingerprint(xrdp.cert)
    broker = demo.procs["broker"].pid
    gateway = demo.procs["gateway"].pid
    log = demo.root / "broker" / "audit" / "audit.log"

    asyncio.run(rdp_direct_run(port, password, fingerprint, 1.0))  # warm: xrdp's first client
    direct = asyncio.run(rdp_direct_run(port, password, fingerprint, seconds))
    res.put("desktop_rdp_updates_per_s_direct", direct.updates / direct.seconds, 1)
    info["direct"] = {
        "bitmap_updates_per_s": round(direct.updates / direct.seconds, 1),
        "rectangles_per_s": round(direct.rects / direct.seconds, 1),
        "Mpixels_per_s": round(direct.pixels / direct.seconds / 1e6, 2),
    }

    def hoshu(n: int, length: float) -> list[Run]:
        return asyncio.run(hoshu_runs(demo.api, token, port, n, length, RDP_DESKTOP, True))

    ended_before = len(_ended(log))
    hoshu(1, 1.0)  # warm: the broker's first RDP session compiles aardwolf's codecs
    _wait_ended(log, ended_before + 1)

    ended_before = len(_ended(log))
    b0, g0, t0 = tree_cpu_s(broker), tree_cpu_s(gateway), time.monotonic()
    [one] = hoshu(1, seconds)
    [ended] = _wait_ended(log, ended_before + 1)[ended_before:]
    wall = time.monotonic() - t0
    b1, g1 = tree_cpu_s(broker), tree_cpu_s(gateway)
    res.put("desktop_rdp_updates_per_s_hoshu", one.fps, 1)
    info["hoshu"] = {"stream_kB_per_s": round(one.nbytes / one.seconds / 1e3, 1)}
    size = int(ended.get("RecordingSize") or 0)
    if size <= 0:
        raise DesktopBenchError(f"session.ended carries no recording size: {ended}")
    res.put("desktop_rdp_recording_MB_per_min", size / 1e6 / (wall / 60), 2)
    res.put("desktop_rdp_broker_cpu_s_per_session_min", (b1 - b0) / (wall / 60), 3)
    res.put("desktop_rdp_gateway_cpu_s_per_session_min", (g1 - g0) / (wall / 60), 3)

    count = sizes.desktop_full_frames
    ended_before = len(_ended(log))
    frames = asyncio.run(
        hoshu_full_frames(demo.api, token, port, count, RDP_DESKTOP, encodings=(RAW,))
    )
    res.put("desktop_rdp_full_frame_ms_hoshu_raw", frames[RAW] * 1000, 1)
    _wait_ended(log, ended_before + 1)

    cpus = {
        "broker": broker,
        "gateway": gateway,
        "xrdp": child_pid("xrdp"),
        "xvnc": xvnc_pid(xrdp.vnc.port),
    }
    # closing an RDP session (aardwolf's shutdown, up to 2 s) waits for a busy broker
    carried = _levels(
        sizes, info, log, "desktop rdp", cpus, lambda n: hoshu(n, seconds), ended_timeout_s=180
    )
    res.put("desktop_rdp_sessions_at_10fps", carried)
