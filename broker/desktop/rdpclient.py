"""The broker's RDP client: aardwolf, fenced.

aardwolf (PyPI, MIT, asyncio) speaks RDP; this module is the one place that knows
its insides.  :func:`connect` opens an RDP session over a byte stream the caller
already has (the gateway tunnel), with Network Level Authentication (CredSSP, NTLM,
the stored password) where the server takes it and TLS where it does not, the
certificate checked before the password is sent either way, and returns an
:class:`RdpSession` whose updates are plain bitmaps.

**Security offered.** The client offers NLA (``HYBRID``) and TLS; the server chooses.
``HYBRID_EX`` (NLA with the Early User Authorization Result) is not offered: no server
here speaks it (FreeRDP 2's does not), so aardwolf's code for it is untested, and a
server that takes NLA takes plain ``HYBRID``.  Standard RDP security is never offered,
and a server that chooses it is refused.  Falling back to TLS is safe only because of
the pin: the TLS certificate is checked against the instrument's pin
(``check_certificate``) right after the TLS handshake, before either the CredSSP
exchange (NLA) or the client info (TLS) starts, so a server that is not the pinned one
sees neither the password nor its NTLM response.  CredSSP then binds the exchange to
the public key of that same certificate (its ``pubKeyAuth``), so a relay that holds
another key is caught by the server too.  With NLA the password goes only in CredSSP's
``TSCredentials`` (sealed by NTLM, inside TLS); the client info carries the user and
domain, no password.

What is changed of aardwolf 0.2.16, each a small override on a subclass or a
tolerant parser, checked by the RDP tests against real servers
(``tests/desktop/test_rdp_desktop.py``: xrdp; ``test_rdp_nla.py``: FreeRDP):

- the connection is made over the given stream (no socket of aardwolf's own);
- the TLS certificate is handed to ``check_certificate`` right after the TLS
  handshake, before the CredSSP exchange or the client info (which carries the
  password under TLS) is sent; CredSSP refuses to start if it was not;
- a CredSSP failure is sorted: the server turning the NTLM response down (an error
  code, or the connection closed after it) is ``wrong_credential``;
- CredSSP itself (raw NTLM, the server's time in the NTLMv2 response, no NTLM key in
  the log) is asyauth's, fenced in :mod:`broker.desktop.rdpnla`;
- the user channel (the user id itself, 1001 + the PER initiator) is joined as well as
  the I/O channel (MS-RDPBCGR 1.3.1.1 asks for both; xrdp and FreeRDP insist);
- the client info asks for auto logon (``INFO_AUTOLOGON``): the stored password logs
  in, no login screen of the server is shown to the engineer;
- the MCS Erect Domain Request is encoded as MS-RDPBCGR's example has it (aardwolf's
  bytes leave one over, which FreeRDP's server refuses);
- share data headers carry their true length (aardwolf 0.2.16 counts 6 bytes too
  many, which xrdp refuses);
- the client's Synchronize goes first (xrdp waits for it before its own; aardwolf
  waits for the server's): a server Synchronize is queued for aardwolf itself;
- the client core data announces the keyboard type, subtype and function keys of
  the instrument's keyboard (aardwolf's are those of a US keyboard whatever its
  settings say; the input capabilities take them from the settings);
- a capability set of a type aardwolf does not know is skipped, as the protocol asks,
  instead of failing the connection;
- a server that chose neither TLS nor NLA is refused at once (aardwolf would go on
  with standard RDP security and wait out its licensing timeout);
- the clipboard channel (:mod:`broker.desktop.rdpclip`, asked for only when the
  hospital allows the clipboard) is left out when the server gives it no channel id
  (xrdp gives none with its channels off; aardwolf would fail the connection), and
  a channel chunk that is cut short or does not decompress, or that aardwolf's
  logon check cannot read, goes to the channel to be refused instead of ending the
  connection;
- bitmaps are decoded at the bitmap's own width and height and cut to the visible
  part (``destLeft``..``destRight``, ``destTop``..``destBottom``): xrdp pads a
  bitmap's width to a multiple of 4, aardwolf decodes at the visible width and
  fails (and prints the bitmap's data); the decoding (aardwolf's run-length
  decoder, which lets go of the GIL) runs on :data:`DECODE_THREADS` threads, one
  update at a time per session, so the event loop keeps serving every other
  session; a bitmap that does not decode is counted
  (:attr:`RdpSession.bitmaps_dropped`) and logged at most once per
  :data:`DROP_LOG_S` seconds with the count, never with its data;
- the login is confirmed before the session is handed over (:data:`LOGON_TIMEOUT_S`),
  see :func:`connect`.

**Is the stored login accepted?** With NLA the server checks the password before
any screen exists: a wrong one fails CredSSP (``wrong_credential``), and a CredSSP
exchange that succeeds is the confirmation.  Under TLS an RDP server does not refuse
a wrong password sent with auto logon: it shows its own login screen instead.  The
session then counts as logged on only on one of two signals, else it is refused
(``wrong_credential``):

- the Save Session Info PDU (MS-RDPBCGR 2.2.10.1, "logon info"), which Windows
  sends once the user is logged on;
- xrdp (0.9, up to 0.10) sends no logon info for its own sessions and no error
  when its session module refuses the password: it draws its "Connection Log"
  window.  Its login screens use only its two built-in pointers, which it loads
  into pointer cache slots 0 and 1; the session behind (the VNC or Xorg module)
  sets pointers in slots 2 and up (``xrdp_cache_add_pointer``).  A pointer in a
  slot from 2 is the signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import hashlib
import io
import logging
import ssl
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import aardwolf.connection as _rdp_module
import aardwolf.protocol.pdu.capabilities as _caps
import asn1tools
from aardwolf import _rle
from aardwolf._version import __version__ as _aardwolf_version
from aardwolf.commons.iosettings import RDPIOSettings
from aardwolf.commons.queuedata import RDPDATATYPE
from aardwolf.commons.queuedata.constants import MOUSEBUTTON, VIDEO_FORMAT
from aardwolf.commons.target import RDPTarget
from aardwolf.connection import RDPConnection
from aardwolf.protocol.fastpath.bitmap import TS_BITMAP_FLAG, TS_UPDATE_BITMAP_DATA
from aardwolf.protocol.T124.userdata import TS_SC
from aardwolf.protocol.T124.userdata.clientcoredata import TS_UD_CS_CORE
from aardwolf.protocol.T124.userdata.constants import TS_UD_TYPE
from aardwolf.protocol.T125.infopacket import INFO_FLAG, TS_INFO_PACKET
from aardwolf.protocol.T128.clientconfirmactivepdu import TS_CONFIRM_ACTIVE_PDU
from aardwolf.protocol.T128.share import PDUTYPE, TS_SHARECONTROLHEADER
from aardwolf.protocol.x224.constants import SUPP_PROTOCOLS
from asyauth.common.constants import asyauthProtocol, asyauthSecret
from asyauth.common.credentials import UniCredential
from asysocks.unicomm.common.connection import UniConnection
from asysocks.unicomm.common.packetizers import Packetizer
from asysocks.unicomm.common.target import UniProto

from broker.desktop.keyboards import LAYOUTS
from broker.desktop.rdpclip import ClipEvent, Cliprdr
from broker.desktop.rdpdrive import DriveDir, Rdpdr
from broker.desktop.rdpnla import credssp_context, credssp_status, login_refused
from broker.desktop.rfb import DesktopError

log = logging.getLogger(__name__)

AARDWOLF_VERSION = "0.2.16"
if _aardwolf_version != AARDWOLF_VERSION:  # the overrides below are of this version's insides
    raise ImportError(f"hoshu's RDP client is built on aardwolf {AARDWOLF_VERSION}")
MAX_SIDE = 4096
LOGON_TIMEOUT_S = 10.0  # the login must be confirmed this soon after the connection
LOGIN_REFUSED = "the instrument refused the stored login — ask the hospital to update it"
_NLA = SUPP_PROTOCOLS.HYBRID | SUPP_PROTOCOLS.HYBRID_EX
# never SUPP_PROTOCOLS.RDP (standard RDP security), nor the untested HYBRID_EX
_OFFERED = SUPP_PROTOCOLS.SSL | SUPP_PROTOCOLS.HYBRID
# pointer updates that name a cache slot: fast path (update code) and slow path
# (TS_POINTER_PDU message type) -> offset of the slot in the update's data
_FP_POINTER_SLOT = {0x9: 0, 0xA: 0, 0xB: 2, 0xC: 2}
_SLOW_POINTER_SLOT = {0x0006: 0, 0x0007: 0, 0x0008: 2}
_FIRST_SESSION_SLOT = 2  # xrdp's own screens use slots 0 and 1 only
DECODE_THREADS = 2  # bitmap decoding, off the event loop, for all sessions together
DROP_LOG_S = 10.0  # a bitmap that does not decode is logged at most this often
_BPP = (16, 24, 32)  # the colour depths aardwolf's decoder takes
_DECODER = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="rdp-decode")
_MCS_USER_BASE = 1001  # MCS user ids are sent less this (T.125 UserId, MS-RDPBCGR 2.2.1.6)


class RdpError(DesktopError):
    """The RDP session could not be opened or went wrong; ``reason`` names why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Reader(Protocol):
    async def read(self, n: int = -1) -> bytes: ...


class Writer(Protocol):
    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Rect:
    """A changed rectangle of the remote screen: RGBA pixels, row by row."""

    x: int
    y: int
    width: int
    height: int
    pixels: bytes


def certificate_fingerprint(der: bytes) -> str:
    """The SHA-256 of a DER certificate, ``SHA256:`` and hex (what the pin stores)."""
    return "SHA256:" + hashlib.sha256(der).hexdigest()


# --- aardwolf, fenced ----------------------------------------------------------------

_original_caps_from_buffer = _caps.TS_CAPS_SET.from_buffer
_known_caps = {m.value for m in _caps.CAPSTYPE}


def _tolerant_caps_from_buffer(buff: io.BytesIO) -> Any:
    start = buff.tell()
    head = buff.read(4)
    if len(head) < 4:
        raise ValueError("capability set cut short")
    kind, length = struct.unpack("<HH", head)
    if kind in _known_caps:
        buff.seek(start)
        return _original_caps_from_buffer(buff)
    if length < 4:
        raise ValueError("capability set with a bad length")
    buff.read(length - 4)
    return _caps.TS_CAPS_SET()  # capabilitySetType None: matches nothing aardwolf asks


_caps.TS_CAPS_SET.from_buffer = staticmethod(_tolerant_caps_from_buffer)


class _StreamConnection(UniConnection):  # type: ignore[misc]
    """aardwolf's connection object over the caller's stream; the certificate is
    checked as soon as TLS is up."""

    def __init__(
        self,
        reader: Reader,
        writer: Writer,
        packetizer: Packetizer,
        check: Callable[[bytes], Awaitable[None]],
    ) -> None:
        super().__init__(reader, writer, packetizer)
        self._check = check
        self.hoshu_checked: bytes | None = None

    async def wrap_ssl(self, ssl_ctx: Any = None, packetizer: Any = None) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the pin below is the check, as for SSH host keys
        await super().wrap_ssl(ctx, packetizer)
        der = self.packetizer.get_peer_certificate()
        if not der:
            raise RdpError("tls_required", "the instrument sent no TLS certificate")
        await self._check(der)
        self.hoshu_checked = der  # CredSSP starts only on the certificate checked here


class _Dial:
    """Stands in for asysocks' ``UniClient`` in aardwolf: the connection is the stream
    its target carries (``hoshu_stream``); aardwolf opens no socket of its own."""

    def __init__(self, target: Any, packetizer: Packetizer) -> None:
        self.target = target
        self.packetizer = packetizer

    async def connect(self) -> _StreamConnection:
        stream = getattr(self.target, "hoshu_stream", None)
        if stream is None:
            raise RdpError("rdp_error", "an RDP connection is made only over a given stream")
        reader, writer, check = stream
        return _StreamConnection(reader, writer, self.packetizer, check)


_rdp_module.UniClient = _Dial
_original_normalize_channel_pdu = _rdp_module.normalize_channel_pdu


def _tolerant_normalize_channel_pdu(data: bytes, decompressor: Any) -> bytes:
    """A virtual channel chunk as aardwolf's reader passes it on; one that is cut
    short or does not decompress goes on as it came (the clipboard channel refuses
    it) instead of ending the connection."""
    try:
        return bytes(_original_normalize_channel_pdu(data, decompressor))
    except (ValueError, IndexError, struct.error) as exc:
        log.info("a virtual channel chunk that does not read is passed on as it is: %s", exc)
        return bytes(data)


_rdp_module.normalize_channel_pdu = _tolerant_normalize_channel_pdu


class _ChannelIds(list[int]):
    """The server's channel ids: one it did not give (it gave fewer than were asked
    for; xrdp gives none when its channels are off) reads as 0, not joined."""

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, int) and i >= len(self):
            return 0
        return super().__getitem__(i)


class _ServerData(TS_SC):  # type: ignore[misc]
    @staticmethod
    def from_bytes(data: bytes) -> Any:
        parsed = TS_SC.from_bytes(data)
        net = parsed.serverdata.get(TS_UD_TYPE.SC_NET)
        if net is not None:
            net.channelIdArray = _ChannelIds(net.channelIdArray)
        return parsed


_rdp_module.TS_SC = _ServerData

# the keyboard (type, subtype, function keys) of the connection whose client core data
# is being built: aardwolf builds it with type 4 whatever its settings say
_CORE_KEYBOARD: contextvars.ContextVar[tuple[int, int, int] | None] = contextvars.ContextVar(
    "hoshu_core_keyboard", default=None
)


class _CoreData(TS_UD_CS_CORE):  # type: ignore[misc]
    """The client core data (TS_UD_CS_CORE) announcing the connection's keyboard."""

    def __init__(self) -> None:
        super().__init__()
        keyboard = _CORE_KEYBOARD.get()
        if keyboard is not None:
            self.keyboardType, self.keyboardSubType, self.keyboardFunctionKey = keyboard


_rdp_module.TS_UD_CS_CORE = _CoreData


class _Codecs:
    """aardwolf compiles its ASN.1 codecs on every connection (about 4 s of CPU); the
    compiled codecs are kept (they hold no state of a connection)."""

    compile_string = staticmethod(functools.cache(asn1tools.compile_string))


_rdp_module.asn1tools = _Codecs


def _warm_codecs() -> None:
    _Codecs.compile_string(_rdp_module.MCSPDU_ver_2, "ber")
    _Codecs.compile_string(_rdp_module.MCSPDU_ver_2, "per")
    _Codecs.compile_string(_rdp_module.GCCPDU, "per")


_SYNC = struct.pack("<HHH", 22, 0x17, 1002) + struct.pack("<IBBHBBH", 0x103EA, 0, 1, 4, 31, 0, 0)


class _Connection(RDPConnection):  # type: ignore[misc]
    def __init__(
        self,
        target: Any,
        credential: Any,
        settings: RDPIOSettings,
    ) -> None:
        super().__init__(target, credential, settings)
        self.authapi: Any = None  # CredSSP's context, made on first use (credssp_auth)
        self.hoshu_logged_on = asyncio.Event()
        self.hoshu_drops = _Drops()
        reassembler = self._RDPConnection__fastpath_reassembler
        feed = reassembler.feed

        def watched(update: Any) -> Any:
            whole = feed(update)
            if whole is not None and not self.hoshu_logged_on.is_set():
                at = _FP_POINTER_SLOT.get(int(whole.updateCode))
                if at is not None:
                    self.hoshu_pointer(whole.updateData, at)
            return whole

        reassembler.feed = watched

    def check_logon_status(self, data: bytes) -> None:
        # aardwolf reads every channel's data for a Save Session Info PDU; a
        # clipboard chunk that does not read as one is no reason to end the session
        with contextlib.suppress(ValueError, IndexError, KeyError, struct.error):
            super().check_logon_status(data)

    def hoshu_pointer(self, data: bytes, at: int) -> None:
        """A pointer update naming cache slot ``data[at:at+2]``: one of the session's
        own (slot 2 and up) means the server's session module is drawing."""
        if len(data) >= at + 2 and struct.unpack_from("<H", data, at)[0] >= _FIRST_SESSION_SLOT:
            self.hoshu_logged_on.set()

    @property
    def hoshu_nla(self) -> bool:
        """The server chose Network Level Authentication (CredSSP)."""
        return bool(SUPP_PROTOCOLS(self.x224_protocol or 0) & _NLA)

    async def credssp_auth(self) -> tuple[Any, Any]:
        """aardwolf's CredSSP exchange, started only on the TLS certificate that
        ``check_certificate`` accepted; a refused login is ``wrong_credential``."""
        stream = self._RDPConnection__connection
        checked = getattr(stream, "hoshu_checked", None)
        if checked is None or stream.get_peer_certificate() != checked:
            return None, RdpError("tls_required", "CredSSP without a checked TLS certificate")
        if self.authapi is None:
            self.authapi = credssp_context(self.credentials)
        ok, err = await RDPConnection.credssp_auth(self)
        if err is None:
            return ok, None
        return None, _credssp_error(err, self.authapi)

    async def _RDPConnection__establish_channels(self) -> tuple[Any, Any]:
        chosen = SUPP_PROTOCOLS(self.x224_protocol or 0)
        if chosen not in (SUPP_PROTOCOLS.SSL, SUPP_PROTOCOLS.HYBRID):  # what was offered
            return None, RdpError(
                "tls_required",
                "the instrument does not offer TLS (only standard RDP security, "
                "which hoshu does not speak)",
            )
        kb = self.iosettings
        token = _CORE_KEYBOARD.set((kb.keyboard_type, kb.keyboard_subtype, kb.keyboard_functionkey))
        try:
            return await RDPConnection._RDPConnection__establish_channels(self)  # type: ignore[no-any-return]  # noqa: SLF001
        finally:
            _CORE_KEYBOARD.reset(token)

    async def _RDPConnection__join_channels(self) -> tuple[Any, Any]:
        joined = self._RDPConnection__joined_channels
        for name in [n for n, ch in joined.items() if n != "MCS" and not ch.channel_id]:
            log.info("the instrument has no %s channel: it is not joined", name)
            del joined[name]
        return await RDPConnection._RDPConnection__join_channels(self)  # type: ignore[no-any-return]  # noqa: SLF001

    async def _RDPConnection__erect_domain(self) -> tuple[Any, Any]:
        # PER: erectDomainRequest, subHeight 0 and subInterval 0, each a one-byte
        # length then the byte (aardwolf sends 04 00 01 00 01, a byte too many for
        # FreeRDP's server; xrdp reads only the first byte)
        await self._x224net.write(bytes.fromhex("0401000100"))
        return True, None

    async def _RDPConnection__attach_user(self) -> tuple[Any, Any]:
        ok, err = await RDPConnection._RDPConnection__attach_user(self)  # noqa: SLF001
        if err is not None:
            return ok, err
        # aardwolf's codec gives the initiator as PER has it (the user id less 1001,
        # MS-RDPBCGR 2.2.1.6); the user channel's id is the user id itself
        user_channel = _MCS_USER_BASE + self._initiator
        join = self._t125_per_codec.encode(
            "DomainMCSPDU",
            ("channelJoinRequest", {"initiator": self._initiator, "channelId": user_channel}),
        )
        await self._x224net.write(bytes(join))
        reply = await self._x224net.read()
        if reply is None:
            return None, RdpError("instrument_closed", "the instrument closed the connection")
        kind = self._t125_per_codec.decode("DomainMCSPDU", reply.data)[0]
        if kind != "channelJoinConfirm":
            return None, RdpError("rdp_error", f"the instrument refused the user channel: {kind}")
        return True, None

    async def handle_out_data(
        self,
        dataobj: Any,
        sec_hdr: Any,
        datacontrol_hdr: Any,
        sharecontrol_hdr: Any,
        channel_id: int,
        is_fastpath: bool,
    ) -> tuple[Any, Any]:
        if self.cryptolayer is not None or is_fastpath:
            return None, RdpError("tls_required", "only TLS security is spoken")
        if isinstance(dataobj, TS_INFO_PACKET):
            dataobj.flags |= INFO_FLAG.AUTOLOGON
            if self.hoshu_nla:  # the user and domain as mstsc sends them; the password
                dataobj.UserName = self.credentials.username or ""  # went in CredSSP
                dataobj.Domain = self.credentials.domain or ""
                dataobj.Password = ""
        data = dataobj.to_bytes()
        head = b""
        if sharecontrol_hdr is not None:
            sharecontrol_hdr.pduSource = channel_id
            sharecontrol_hdr.totalLength = len(data) + 6
            head = sharecontrol_hdr.to_bytes()
        elif datacontrol_hdr is not None:
            share = TS_SHARECONTROLHEADER()
            share.pduType = PDUTYPE.DATAPDU
            share.pduSource = channel_id
            share.totalLength = len(data) + 18
            datacontrol_hdr.shareControlHeader = share
            datacontrol_hdr.uncompressedLength = len(data) + 4
            datacontrol_hdr.compressedType = 0
            datacontrol_hdr.compressedLength = 0
            head = datacontrol_hdr.to_bytes()
        if sec_hdr is not None:
            head = sec_hdr.to_bytes() + head
        pdu = {
            "initiator": self._initiator,
            "channelId": channel_id,
            "dataPriority": "high",
            "segmentation": (b"\xc0", 2),
            "userData": head + data,
        }
        await self._x224net.write(
            self._t125_per_codec.encode("DomainMCSPDU", ("sendDataRequest", pdu))
        )
        if isinstance(dataobj, TS_CONFIRM_ACTIVE_PDU):
            mcs = self._RDPConnection__joined_channels["MCS"]
            await mcs.out_queue.put((_SYNC + struct.pack("<HH", 1, mcs.channel_id), None))
        return True, None


# --- what the desktop gate uses -------------------------------------------------------


class RdpSession:
    """One open RDP session: :meth:`next` gives changed rectangles, the ``send_*``
    methods give the instrument keys and the pointer."""

    def __init__(
        self,
        conn: _Connection,
        width: int,
        height: int,
        writer: Writer | None = None,
        clipboard: Cliprdr | None = None,
        drive: Rdpdr | None = None,
    ) -> None:
        self._conn = conn
        self.width = width
        self.height = height
        self._writer = writer
        self.clipboard = clipboard  # the cliprdr channel, joined only when allowed
        self.drive = drive  # the rdpdr channel, joined only when allowed

    async def next_clipboard(self) -> ClipEvent | None:
        """The next clipboard event of the instrument (its text, or a refused PDU);
        None once the session ended.  Without the clipboard channel: only None, at
        the end."""
        if self.clipboard is None:
            await self._conn.disconnected_evt.wait()
            return None
        return await self.clipboard.events.get()

    async def offer_clipboard(self, text: str) -> None:
        """The browser's clipboard text, for the instrument to paste (only with the
        clipboard channel; without it nothing is sent)."""
        if self.clipboard is not None:
            await self.clipboard.offer(text)

    async def next(self) -> Rect | None:
        """The next changed rectangle (clipped to the screen); None once the session
        ended.  Other updates (pointer shapes, bells) are skipped."""
        while True:
            item = await self._conn.ext_out_queue.get()
            if item is None:
                return None
            if isinstance(item, Rect):  # a slow-path bitmap, decoded already
                rect = _clipped(item, self.width, self.height)
                if rect is not None:
                    return rect
                continue
            if item.type != RDPDATATYPE.VIDEO:
                continue
            image = item.data  # PIL image, RGBA
            x, y = int(item.x), int(item.y)
            w, h = image.size
            if x >= self.width or y >= self.height or w <= 0 or h <= 0:
                continue
            w, h = min(w, self.width - x), min(h, self.height - y)
            if (w, h) != image.size:
                image = image.crop((0, 0, w, h))
            return Rect(x, y, w, h, image.convert("RGBA").tobytes())

    @property
    def bitmaps_dropped(self) -> int:
        """How many bitmaps of the instrument did not decode (their screen areas
        were not updated)."""
        return self._conn.hoshu_drops.total

    async def send_scancode(self, code: int, pressed: bool, extended: bool) -> None:
        await self._checked(self._conn.send_key_scancode(code, pressed, extended))

    async def send_unicode(self, char: str, pressed: bool) -> None:
        await self._checked(self._conn.send_key_char(char, pressed))

    async def send_pointer(self, button: int, x: int, y: int, pressed: bool) -> None:
        """``button``: 0 move, 1 left, 2 right, 3 middle, 4 wheel up, 5 wheel down."""
        kinds = {
            0: MOUSEBUTTON.MOUSEBUTTON_HOVER,
            1: MOUSEBUTTON.MOUSEBUTTON_LEFT,
            2: MOUSEBUTTON.MOUSEBUTTON_RIGHT,
            3: MOUSEBUTTON.MOUSEBUTTON_MIDDLE,
            4: MOUSEBUTTON.MOUSEBUTTON_WHEEL_UP,
            5: MOUSEBUTTON.MOUSEBUTTON_WHEEL_DOWN,
        }
        x = max(0, min(x, self.width - 1))
        y = max(0, min(y, self.height - 1))
        await self._checked(self._conn.send_mouse(kinds[button], x, y, pressed))

    async def _checked(self, call: Awaitable[Any]) -> None:
        result = await call
        if isinstance(result, tuple) and len(result) == 2 and result[1] is not None:
            raise RdpError("instrument_closed", f"the instrument stopped taking input: {result[1]}")

    @property
    def ended(self) -> bool:
        return bool(self._conn.disconnected_evt.is_set())

    async def close(self) -> None:
        """End the RDP session (aardwolf's shutdown request waits for a reply on the
        MCS queue, which :func:`_take_slow_path_updates` has taken over: it is given
        an empty one at once)."""
        mcs = self._conn._RDPConnection__joined_channels["MCS"]  # noqa: SLF001
        mcs.out_queue.put_nowait((b"", None))
        try:
            await asyncio.wait_for(self._conn.terminate(), 2)
        except (TimeoutError, OSError) as exc:
            log.info("RDP session close: %s", exc)
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()  # the stream it ran over (a gateway tunnel channel)


def _clipped(rect: Rect, width: int, height: int) -> Rect | None:
    """``rect`` cut to a screen of ``width`` x ``height``; None if nothing is left."""
    if rect.x >= width or rect.y >= height:
        return None
    w, h = min(rect.width, width - rect.x), min(rect.height, height - rect.y)
    if (w, h) == (rect.width, rect.height):
        return rect
    row, keep = rect.width * 4, w * 4
    pixels = b"".join(rect.pixels[r * row : r * row + keep] for r in range(h))
    return Rect(rect.x, rect.y, w, h, pixels)


async def connect(
    reader: Reader,
    writer: Writer,
    *,
    username: str,
    password: str,
    domain: str = "",
    width: int = 1024,
    height: int = 768,
    check_certificate: Callable[[bytes], Awaitable[None]],
    keyboard_layout: str = "en-US",
    logon_timeout_s: float = LOGON_TIMEOUT_S,
    clipboard: bool = False,
    drive: DriveDir | None = None,
) -> RdpSession:
    """Log in to an RDP server over ``reader``/``writer`` (TLS required; the server's
    certificate is handed to ``check_certificate``, which raises to refuse it, before
    the password is sent) and wait until the login is confirmed (see the module's
    docstring); a login not confirmed within ``logon_timeout_s`` is closed and
    refused (``wrong_credential``: the stored password is wrong, or the server shows
    its login screen for another reason).  The clipboard channel is offered to the
    server only with ``clipboard`` (the hospital allows it; :mod:`broker.desktop.rdpclip`),
    the drive channel only with a ``drive`` (the hospital allows it;
    :mod:`broker.desktop.rdpdrive`); no other virtual channel ever is.  The server is
    told the instrument's ``keyboard_layout`` (:data:`broker.desktop.keyboards.LAYOUTS`:
    its layout id, keyboard type, subtype and function keys, in the client core data
    and the input capabilities).  Raises :class:`RdpError`."""
    keyboard = LAYOUTS.get(keyboard_layout)
    if keyboard is None:
        raise RdpError("bad_keyboard", f"no keyboard layout {keyboard_layout!r}")
    if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
        raise RdpError("bad_size", f"a desktop of {width}x{height} is not asked for")
    settings = RDPIOSettings()
    # the clipboard and the broker's drive only if allowed; never a printer, sound
    # or dynamic channel
    settings.channels = ([Cliprdr] if clipboard else []) + ([Rdpdr] if drive else [])
    settings.hoshu_drive = drive
    settings.vchannels = {}
    settings.drives = []
    settings.clipboard_use_pyperclip = False
    settings.clipboard = None
    settings.video_width = width
    settings.video_height = height
    settings.video_bpp_min = 16
    settings.video_bpp_max = 32
    settings.video_out_format = VIDEO_FORMAT.PIL
    settings.supported_protocols = _OFFERED  # NLA or TLS; no standard RDP security
    settings.keyboard_layout = keyboard.layout_id
    settings.keyboard_type = keyboard.kind
    settings.keyboard_subtype = keyboard.subtype
    settings.keyboard_functionkey = keyboard.function_keys
    target = RDPTarget(ip="127.0.0.1", port=3389, protocol=UniProto.CLIENT_TCP, timeout=10)
    credential = UniCredential(
        secret=password,
        username=username,
        domain=domain or None,
        stype=asyauthSecret.PASSWORD,
        protocol=asyauthProtocol.NTLM,  # CredSSP's inner protocol; under TLS only sent as is
    )
    refused: list[RdpError] = []

    async def check(der: bytes) -> None:
        try:
            await check_certificate(der)
        except RdpError as exc:
            refused.append(exc)
            raise

    await asyncio.to_thread(_warm_codecs)  # once a process, seconds of CPU: not on the loop
    target.hoshu_stream = (reader, writer, check)
    conn = _Connection(target, credential, settings)
    ok, err = await conn.connect()
    if err is not None or not ok:
        if refused:
            raise refused[0]
        if isinstance(err, RdpError):
            raise err
        raise RdpError("rdp_refused", _plain(err))
    if conn.hoshu_nla:
        conn.hoshu_logged_on.set()  # CredSSP succeeded: the server accepted the password
    _take_slow_path_updates(conn)
    cliprdr: Cliprdr | None = getattr(settings, "hoshu_cliprdr", None) if clipboard else None
    if cliprdr is not None and not cliprdr.channel_id:
        cliprdr = None  # the instrument gave no clipboard channel
    rdpdr: Rdpdr | None = getattr(settings, "hoshu_rdpdr", None) if drive else None
    if rdpdr is not None and not rdpdr.channel_id:
        rdpdr = None  # the instrument gave no drive channel
    session = RdpSession(conn, width, height, writer, cliprdr, rdpdr)
    await _confirm_logon(conn, session, logon_timeout_s)
    return session


async def _confirm_logon(conn: _Connection, session: RdpSession, timeout_s: float) -> None:
    logged_on = asyncio.ensure_future(_either(conn.hoshu_logged_on, conn.logon_info_received))
    ended = asyncio.ensure_future(conn.disconnected_evt.wait())
    try:
        done, _ = await asyncio.wait(
            {logged_on, ended}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        logged_on.cancel()
        ended.cancel()
    if logged_on in done:
        return
    await session.close()
    if ended in done:
        raise RdpError("instrument_closed", "the instrument ended the RDP connection at login")
    raise RdpError("wrong_credential", LOGIN_REFUSED)


async def _either(a: asyncio.Event, b: asyncio.Event) -> None:
    waits = {asyncio.ensure_future(a.wait()), asyncio.ensure_future(b.wait())}
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


def _take_slow_path_updates(conn: _Connection) -> None:
    """Bitmap updates the server sends on the slow path (xrdp does) reach the session
    as the fast-path ones do; other share data after the connection is dropped."""
    mcs = conn._RDPConnection__joined_channels["MCS"]  # noqa: SLF001
    early: list[Any] = []
    while not mcs.out_queue.empty():
        early.append(mcs.out_queue.get_nowait())

    async def take(data: bytes) -> None:
        if data is None or len(data) < 22:
            return
        kind = struct.unpack_from("<H", data, 2)[0] & 0x0F
        if kind == PDUTYPE.DATAPDU.value and data[14] == 0x1B:  # PDUTYPE2_POINTER
            at = _SLOW_POINTER_SLOT.get(struct.unpack_from("<H", data, 18)[0])
            if at is not None:
                conn.hoshu_pointer(data[22:], at)
            return
        if kind != PDUTYPE.DATAPDU.value or data[14] != 0x02:  # PDUTYPE2_UPDATE
            return
        if struct.unpack_from("<H", data, 18)[0] != 0x0001:  # UPDATETYPE_BITMAP
            return
        try:
            update = TS_UPDATE_BITMAP_DATA.from_bytes(data[18:])
        except (ValueError, IndexError, struct.error) as exc:
            log.info("a bitmap update that does not parse is dropped: %s", exc)
            return
        loop = asyncio.get_running_loop()
        decoded = await loop.run_in_executor(_DECODER, _decode_all, update.rectangles)
        for rect, failure in decoded:
            if rect is not None:
                await conn.ext_out_queue.put(rect)
            else:
                conn.hoshu_drops.count(failure)

    mcs.process_channel_data = take
    conn.hoshu_early = [asyncio.ensure_future(take(data)) for data, _err in early]


class _Drops:
    """Bitmaps that did not decode: counted, and logged at most once per
    :data:`DROP_LOG_S` seconds with how many since the last line (the reason of the
    last one, never its data)."""

    def __init__(self) -> None:
        self.total = 0
        self._unlogged = 0
        self._logged_at: float | None = None

    def count(self, reason: str) -> None:
        self.total += 1
        self._unlogged += 1
        now = time.monotonic()
        if self._logged_at is None or now - self._logged_at >= DROP_LOG_S:
            log.info(
                "%d bitmap(s) that do not decode dropped (%d in this session); last: %s",
                self._unlogged,
                self.total,
                reason,
            )
            self._unlogged = 0
            self._logged_at = now


def _decode_all(bitmaps: Sequence[Any]) -> list[tuple[Rect | None, str]]:
    """The bitmaps of one update, decoded (on a decoding thread): each a
    :class:`Rect` of its visible part, or None and why it does not decode."""
    out: list[tuple[Rect | None, str]] = []
    for bitmap in bitmaps:
        try:
            out.append((_decode(bitmap), ""))
        except (ValueError, IndexError, TypeError, OverflowError) as exc:
            out.append((None, f"{type(exc).__name__}: {str(exc)[:120]}"))
    return out


def _decode(bitmap: Any) -> Rect:
    """One TS_BITMAP_DATA (MS-RDPBCGR 2.2.9.1.1.3.1.2.2): the bitmap is decoded at its
    own ``width`` x ``height`` (xrdp pads the width to a multiple of 4) and cut to the
    visible part, ``destLeft``..``destRight`` by ``destTop``..``destBottom``
    (inclusive), which lies at the bitmap's top left."""
    width, height, bpp = int(bitmap.width), int(bitmap.height), int(bitmap.bitsPerPixel)
    x, y = int(bitmap.destLeft), int(bitmap.destTop)
    w, h = int(bitmap.destRight) - x + 1, int(bitmap.destBottom) - y + 1
    if bpp not in _BPP:
        raise ValueError(f"{bpp} bits per pixel")
    if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
        raise ValueError(f"a bitmap of {width}x{height}")
    if not (0 < w <= width and 0 < h <= height):
        raise ValueError(f"a visible part of {w}x{h} of a bitmap of {width}x{height}")
    compressed = TS_BITMAP_FLAG.BITMAP_COMPRESSION in bitmap.flags
    pixels = bytes(
        _rle.bitmap_decompress(bitmap.bitmapDataStream, width, height, bpp, int(compressed))
    )
    if len(pixels) != width * height * 4:
        raise ValueError(f"{len(pixels)} bytes decoded for a bitmap of {width}x{height}")
    if w != width:
        row, keep = width * 4, w * 4
        pixels = b"".join(pixels[r * row : r * row + keep] for r in range(h))
    elif h != height:
        pixels = pixels[: w * h * 4]
    return Rect(x, y, w, h, pixels)


def _credssp_error(err: BaseException, authapi: Any) -> RdpError:
    """A failed CredSSP exchange as hoshu names it: the server refusing the login is
    ``wrong_credential`` (:func:`~broker.desktop.rdpnla.login_refused`); anything else
    is ``rdp_refused``."""
    if isinstance(err, RdpError):
        return err
    if login_refused(err, authapi):
        return RdpError("wrong_credential", LOGIN_REFUSED)
    status = credssp_status(err)
    if status is not None:
        return RdpError("rdp_refused", f"the RDP login failed: CredSSP error 0x{status:08X}")
    return RdpError("rdp_refused", _plain(err))


def _plain(err: BaseException | None) -> str:
    text = str(err or "the instrument ended the RDP connection")
    return f"the RDP login failed: {text[:200]}"


__all__ = [
    "AARDWOLF_VERSION",
    "LOGIN_REFUSED",
    "LOGON_TIMEOUT_S",
    "RdpError",
    "RdpSession",
    "Rect",
    "certificate_fingerprint",
    "connect",
]
