"""`BackgroundLoop`: an event loop on its own thread, so sync clients (openai, requests, ollama)
can call real servers that run in the same test process."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

T = TypeVar("T")


class BackgroundLoop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-servers", daemon=True)
        self._thread.start()
        self._contexts: list[AbstractAsyncContextManager[Any]] = []

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def enter(self, context: AbstractAsyncContextManager[T]) -> T:
        value = self.run(context.__aenter__())
        self._contexts.append(context)
        return value

    def leave(self) -> None:
        """Exit the context entered last (stop the Sentinel a test started, say) before the test ends."""
        context = self._contexts.pop()
        self.run(context.__aexit__(None, None, None), timeout=60)

    def close(self) -> None:
        while self._contexts:
            context = self._contexts.pop()
            self.run(context.__aexit__(None, None, None), timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
