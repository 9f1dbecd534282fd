"""A private asyncio loop in a daemon thread, and the ways to call into it from any thread.

The widget's client, view state and redraws live on such a loop, so an answer keeps
streaming while a notebook cell blocks the kernel's own loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class LoopThread:
    """Owns `loop`, run forever by `thread` until `stop`."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run `coro` on the loop; its future can be waited on from another thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call_soon(self, callback: Callable[[], Any]) -> None:
        """Run `callback` on the loop at its next turn (nothing once it is closed)."""
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(callback)

    def call(self, function: Callable[[], T], timeout: float) -> T:
        """Run `function` on the loop thread (which owns the state) and return its result."""
        if threading.current_thread() is self.thread or not self.loop.is_running():
            return function()  # on the loop already, or stopped: nothing else touches it

        async def call() -> T:
            return function()

        return self.submit(call()).result(timeout)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Start `coro` as a task on the loop (call on the loop thread); failures are logged."""
        self.loop.create_task(coro).add_done_callback(_log_failure)

    def stop(self, shutdown: Coroutine[Any, Any, Any], timeout: float) -> None:
        """Run `shutdown` on the loop, stop it, and close it once its thread has ended."""
        if self.loop.is_running():
            try:
                self.submit(shutdown).result(timeout)
            except Exception:
                log.debug("chatbridge: loop shutdown failed", exc_info=True)
            self.loop.call_soon_threadsafe(self.loop.stop)
        else:
            shutdown.close()
        self.thread.join(timeout)
        if not self.thread.is_alive() and not self.loop.is_closed():
            self.loop.close()


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("chatbridge widget: background task failed", exc_info=task.exception())
