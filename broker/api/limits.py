"""Plain ASGI middleware: body size and time limits (413 too large, 408 too slow,
before the route runs), and the caller's real address behind trusted proxies."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
from collections.abc import Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


class BodyLimit:
    """Refuse bodies over ``max_bytes`` (declared or streamed) with 413, and bodies
    not complete within ``timeout_s`` with 408.

    ``streamed`` names the few POST routes that take a large raw body (a path pattern
    and its own limit): a declared length over that limit is 413 here; otherwise the
    body is not read here but handed to the route, which streams it under that limit
    and a deadline of its own (:func:`read_bounded`)."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        timeout_s: float = 30.0,
        streamed: Mapping[str, int] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.streamed = [(re.compile(k), v) for k, v in (streamed or {}).items()]

    def _limit(self, scope: Scope) -> tuple[int, bool]:
        if scope.get("method") == "POST":
            for pattern, limit in self.streamed:
                if pattern.fullmatch(str(scope.get("path", ""))):
                    return limit, True
        return self.max_bytes, False

    async def _reply_413(self, send: Send) -> None:
        await self._reply(send, 413, _error_body("body_too_large", "request body is too large"))

    async def _reply(self, send: Send, status: int, body: bytes) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: dict[bytes, bytes] = dict(scope.get("headers") or [])
        limit, streamed = self._limit(scope)
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > limit
            except ValueError:
                too_big = True
            if too_big:
                await self._reply_413(send)
                return
        if streamed:
            await self.app(scope, receive, send)  # the route reads it, bounded
            return
        # Read the whole body first (it is small by definition), so an oversized
        # stream is answered with 413 before any route sees a byte of it.
        body = bytearray()
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                await self._reply(
                    send,
                    408,
                    _error_body("request_timeout", "the request body did not arrive in time"),
                )
                return
            if message["type"] != "http.request":
                break  # client went away; let the app see the disconnect
            body.extend(message.get("body", b""))
            if len(body) > self.max_bytes:
                await self._reply_413(send)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def parse_networks(values: list[str]) -> tuple[IPNetwork, ...]:
    """The trusted-proxy setting as networks; a malformed entry is a startup error."""
    return tuple(ipaddress.ip_network(v.strip(), strict=False) for v in values)


def _address(text: str) -> IPAddress | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [2001:db8::1]:443
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # 203.0.113.7:5555
        text = text.split(":", 1)[0]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def client_address(
    peer: str | None, forwarded_for: list[str], trusted: tuple[IPNetwork, ...]
) -> str | None:
    """Who is really calling.

    The forwarded header counts only when the TCP peer is a trusted proxy; then
    the hops are read from the right and the first one that is not itself a
    trusted proxy is the caller (anything left of it was written by the caller
    and may be forged).  A malformed hop stops the walk at the last trusted
    address, so a garbled header can never make a caller someone else."""
    peer_addr = _address(peer) if peer else None
    if peer_addr is None or not _inside(peer_addr, trusted):
        return peer
    hops = [h for value in forwarded_for for h in value.split(",") if h.strip()]
    current = peer_addr
    for hop in reversed(hops):
        addr = _address(hop)
        if addr is None:
            break
        current = addr
        if not _inside(addr, trusted):
            break
    return str(current)


def _inside(addr: IPAddress, nets: tuple[IPNetwork, ...]) -> bool:
    return any(addr.version == n.version and addr in n for n in nets)


class ForwardedFor:
    """Behind trusted proxies (the Container Apps ingress), make ``X-Forwarded-For``'s
    rightmost untrusted hop the request's client address, so per-source
    throttling and organisations' source networks see the real caller.  From any
    other peer the header is ignored."""

    def __init__(self, app: ASGIApp, trusted: list[str]) -> None:
        self.app = app
        self.trusted = parse_networks(trusted)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and self.trusted:
            client = scope.get("client")
            peer = client[0] if client else None
            values = [
                v.decode("latin-1")
                for k, v in scope.get("headers") or []
                if k.lower() == b"x-forwarded-for"
            ]
            real = client_address(peer, values, self.trusted)
            if real is not None and real != peer:
                scope = dict(scope)
                scope["client"] = (real, 0)
        await self.app(scope, receive, send)
