"""A blocking client for scripts and notebook cells.

::

    from jupyter_chatbridge.client import ChatClient

    with ChatClient("http://127.0.0.1:8888/", "my-token") as client:
        demo = client.session("demo")
        print(demo.ask("hello"))

It runs an `AsyncChatClient` on a private event loop in a daemon thread, so the
stream keeps reading even while the calling thread (or a notebook cell) is
busy; every method is safe to call from any thread.

A client that is dropped without `close()` (or rebound when a notebook cell runs
again) cleans up after itself: nothing on its loop refers back to the `ChatClient`,
so once the last reference goes, a finalizer schedules the same close on the loop
and the loop thread closes its loop (and its resolver threads) as it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import weakref
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

from tornado.httpclient import AsyncHTTPClient
from tornado.ioloop import IOLoop

from .api import MAX_BUFFERED_EVENTS, AsyncChatClient, AsyncSession
from .outbox import OutboxEvent

log = logging.getLogger(__name__)

T = TypeVar("T")
# Seconds `close()` waits for the stream and outbox to stop.
CLOSE_TIMEOUT = 30.0


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    """The client thread: run the loop until stopped, then close it and all it owns."""
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        try:
            rest = asyncio.all_tasks(loop)
            for task in rest:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            # The resolver's worker threads (getaddrinfo) end with the loop.
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            _close_tornado(loop)


def _close_tornado(loop: asyncio.AbstractEventLoop) -> None:
    """Close the loop with the tornado wrapper and HTTP client made for it, if any
    (tornado keeps both in class-level maps until they are closed)."""
    tornado_loop = IOLoop.current(instance=False)
    if tornado_loop is None:
        loop.close()
        return
    with contextlib.suppress(Exception):
        AsyncHTTPClient().close()
    tornado_loop.close()  # closes `loop` too


def _shut_down(
    loop: asyncio.AbstractEventLoop, aio: AsyncChatClient | None, thread: threading.Thread
) -> Future[None] | None:
    """Close `aio` on its loop, then stop the loop; returns at once (the one close path
    of `ChatClient.close()` and of the finalizer of a dropped client)."""
    if not thread.is_alive() or loop.is_closed():
        return None

    async def close_and_stop() -> None:
        try:
            if aio is not None:
                await asyncio.wait_for(aio.close(), CLOSE_TIMEOUT)
        finally:
            loop.stop()

    try:
        return asyncio.run_coroutine_threadsafe(close_and_stop(), loop)
    except RuntimeError:  # the loop closed meanwhile
        return None


def _offer_to(inbox: queue.Queue[Any]) -> Callable[[dict[str, Any]], None]:
    """A session listener that fills `inbox` and refers to nothing else (no handle, no
    client), so a listener on the loop never keeps a dropped `ChatClient` alive."""

    def offer(event: dict[str, Any]) -> None:
        # Bounded like AsyncSession.events(): a reader that stops must not grow memory.
        with contextlib.suppress(queue.Full):
            inbox.put_nowait(event)

    return offer


class ChatClient:
    """Blocking facade over `AsyncChatClient`; takes the same arguments."""

    def __init__(self, server_url: str | None = None, token: str | None = None, **kwargs: Any):
        self._loop = asyncio.new_event_loop()
        # The thread gets the loop, never `self`: a running thread must not keep us alive.
        self._thread = threading.Thread(
            target=_run_loop, args=(self._loop,), name="chatbridge-client", daemon=True
        )
        self._thread.start()
        self._closed = False

        async def make() -> AsyncChatClient:
            return AsyncChatClient(server_url, token, **kwargs)

        try:
            self.aio = self._call(make())
        except BaseException:
            _shut_down(self._loop, None, self._thread)
            self._thread.join(CLOSE_TIMEOUT)
            raise
        # Handles are remembered while the caller holds them (a strong map would be a
        # cycle: each handle refers to its client); their inboxes are kept for good.
        self._sessions: weakref.WeakValueDictionary[str, Session] = weakref.WeakValueDictionary()
        self._inboxes: dict[str, _Inbox] = {}
        self._finalizer = weakref.finalize(self, _shut_down, self._loop, self.aio, self._thread)

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        if self._closed:
            coro.close()
            raise RuntimeError("this ChatClient is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def call_soon(self, callback: Callable[[], Any]) -> None:
        """Run `callback` on the client's loop (for code that shares its state)."""
        self._loop.call_soon_threadsafe(callback)

    @property
    def cid(self) -> str:
        """The stable connection id of this client."""
        return self.aio.cid

    def connect(self, timeout: float | None = 30.0) -> ChatClient:
        """Open the event stream and wait for the welcome."""
        self._call(self.aio.connect(), timeout)
        return self

    def reconnect(self, timeout: float | None = 30.0) -> None:
        """After the stream gave up ("offline"): start again with a fresh budget, same cid."""

        async def restart() -> None:
            self.aio.reconnect()
            await self.aio.connect()

        self._call(restart(), timeout)

    def session(
        self,
        session_id: str,
        *,
        create: bool = True,
        after_seq: int | None = None,
        attach: bool = False,
        settings: dict[str, Any] | None = None,
        timeout: float | None = 30.0,
    ) -> Session:
        """A handle on a session (created if missing, with `settings` for its agent;
        watched; see `AsyncChatClient.session`)."""
        handle = self._sessions.get(session_id)
        if handle is None:
            inbox = self._inboxes.setdefault(session_id, _Inbox())
            handle = Session(self, session_id, inbox)
            self._sessions[session_id] = handle
        handle.aio = self._call(
            self.aio.session(
                session_id, create=create, after_seq=after_seq, attach=attach, settings=settings
            ),
            timeout,
        )
        handle._inbox.subscribe(handle.aio)
        return handle

    def list_sessions(self) -> list[dict[str, Any]]:
        """Every session on the server."""
        return self._call(self.aio.list_sessions())

    def create_session(
        self,
        session_id: str | None = None,
        *,
        exist_ok: bool = False,
        settings: dict[str, Any] | None = None,
    ) -> Any:
        """Create a session (see `AsyncChatClient.create_session`)."""
        return self._call(self.aio.create_session(session_id, exist_ok=exist_ok, settings=settings))

    def delete_session(self, session_id: str) -> None:
        """Delete a session."""
        self._call(self.aio.delete_session(session_id))

    def history(
        self, session_id: str, after: int = 0, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """A session's stored events after `after`."""
        return self._call(self.aio.history(session_id, after, limit))

    def close(self) -> None:
        """Stop the client and its thread; nothing is left running (idempotent).

        A client that is simply dropped is closed the same way, without waiting.
        """
        self._closed = True
        closing = self._finalizer()  # None when it already ran
        if threading.current_thread() is self._thread:
            return  # called from the loop: it stops once this callback returns
        try:
            if closing is not None:
                closing.result(CLOSE_TIMEOUT + 5)
        finally:
            self._thread.join(CLOSE_TIMEOUT)

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class _Inbox:
    """A session's events for `Session.events()`, filled on the loop."""

    def __init__(self) -> None:
        self.queue: queue.Queue[Any] = queue.Queue(MAX_BUFFERED_EVENTS)
        self._subscribed: AsyncSession | None = None

    def subscribe(self, handle: AsyncSession) -> None:
        if handle is not self._subscribed:  # once per handle (a lost one is replaced)
            self._subscribed = handle
            handle.add_listener(_offer_to(self.queue))


class Session:
    """Blocking handle on one session."""

    def __init__(self, client: ChatClient, session_id: str, inbox: _Inbox) -> None:
        self.client = client
        self.id = session_id
        self.aio: AsyncSession
        self._inbox = inbox

    def send(self, text: str, *, wait: bool = True, timeout: float | None = 60.0) -> Any:
        """Send a message. With `wait`, block until the server's receipt and return it
        (an `OutboxEvent`; raises `SendFailed`); otherwise return its clientMsgId at once."""
        if not wait:

            async def enqueue() -> str:
                return self.aio.send(text)

            return self.client._call(enqueue())
        event: OutboxEvent = self.client._call(self.aio.send_and_wait(text), timeout)
        return event

    def ask(self, text: str, timeout: float | None = 120.0) -> str:
        """Send `text` and return the agent's whole answer (raises `AnswerStopped`
        with the partial text if it was stopped; see `AsyncSession.ask`)."""
        return self.client._call(self.aio.ask(text), timeout)

    def stop(self, message_id: str | None = None, timeout: float | None = 60.0) -> dict[str, Any]:
        """Stop the running answer (or the one named); see `AsyncSession.stop`."""
        result: dict[str, Any] = self.client._call(self.aio.stop(message_id), timeout)
        return result

    def events(self, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """Iterate session events as they arrive (exactly once, in seq order).

        Stops when no event came for `timeout` seconds (None: wait forever) or
        when the session ended.
        """
        while True:
            try:
                event = self._inbox.queue.get(timeout=timeout)
            except queue.Empty:
                return
            yield event
            if event.get("type") == "session_ended":
                return

    def history(self, after: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """The session's stored events after `after`."""
        return self.client.history(self.id, after, limit)

    def export(self, format: str = "markdown", timeout: float | None = 60.0) -> str:
        """The session as `markdown`, `jsonl` or `ipynb` text, as `jupyter chatbridge
        export` writes it (see `AsyncSession.export`)."""
        return self.client._call(self.aio.export(format), timeout)

    def attach(self) -> None:
        """Drive this session from this client."""
        self.client._call(self.aio.attach())

    def delete(self) -> None:
        """Delete the session on the server."""
        self.client._call(self.aio.delete())
