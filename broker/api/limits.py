"""Body size and time limits as plain ASGI middleware: 413 (too large) or 408
(too slow) before the route runs."""

from __future__ import annotations

import asyncio
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send


def _error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


class BodyLimit:
    """Refuse bodies over ``max_bytes`` (declared or streamed) with 413, and bodies
    not complete within ``timeout_s`` with 408."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float = 30.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def _reply_413(self, send: Send) -> None:
        await self._reply(send, 413, _error_body("body_too_large",
                                                 "request body is too large"))

    async def _reply(self, send: Send, status: int, body: bytes) -> None:
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: dict[bytes, bytes] = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.max_bytes
            except ValueError:
                too_big = True
            if too_big:
                await self._reply_413(send)
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
                await self._reply(send, 408, _error_body(
                    "request_timeout", "the request body did not arrive in time"))
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
