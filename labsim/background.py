"""An asyncio loop on a daemon thread, so blocking code can host async instruments.

Tests written with blocking clients (paramiko, subprocess ``ssh``) and async
tests alike can use instruments hosted here: the instruments never share the
caller's event loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from labsim.errors import LabsimError

T = TypeVar("T")


class BackgroundLoop:
    """Owns one event loop running on its own thread until `stop()`."""

    def __init__(self, name: str = "labsim-loop") -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = False

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def start(self) -> BackgroundLoop:
        if not self._started:
            self._thread.start()
            self._started = True
        return self

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 30.0) -> T:
        """Run `coro` on the loop and wait for its result (at most `timeout_s`)."""
        if not self._started or self._loop.is_closed():
            coro.close()
            raise LabsimError("background loop is not running")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout=timeout_s)
        except TimeoutError:
            future.cancel()
            raise

    def stop(self, timeout_s: float = 10.0) -> None:
        """Cancel what still runs, stop the loop and join the thread."""
        if not self._started or self._loop.is_closed():
            return

        async def _cancel_rest() -> None:
            me = asyncio.current_task()
            rest = [t for t in asyncio.all_tasks() if t is not me]
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        try:
            self.run(_cancel_rest(), timeout_s)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout_s)
            if not self._thread.is_alive():
                self._loop.close()
