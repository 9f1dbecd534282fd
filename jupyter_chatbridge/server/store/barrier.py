"""The barrier a `flush` awaits: a writer thread resolves it on the waiting loop."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Barrier:
    """A flush on `loop`, waiting until everything queued before it is written."""

    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]

    @classmethod
    def on_running_loop(cls) -> Barrier:
        loop = asyncio.get_running_loop()
        return cls(loop, loop.create_future())

    def release(self, error: BaseException | None) -> None:
        """From any thread: resolve it (or fail it with `error`) on its loop."""
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
            self.loop.call_soon_threadsafe(settle, self.future, error)


def settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    """On the loop: resolve the waiting flush; it may have gone away (cancelled)."""
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
