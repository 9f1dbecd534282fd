"""A blocking client for scripts and notebook cells.

::

    from jupyter_chatbridge.client import ChatClient

    with ChatClient("http://127.0.0.1:8888/", "my-token") as client:
        demo = client.session("demo")
        print(demo.ask("hello"))

It runs an `AsyncChatClient` on a private event loop in a daemon thread, so the
stream keeps reading even while the calling thread (or a notebook cell) is
busy; every method is safe to call from any thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

from .api import MAX_BUFFERED_EVENTS, AsyncChatClient, AsyncSession
from .outbox import OutboxEvent

T = TypeVar("T")


class ChatClient:
    """Blocking facade over `AsyncChatClient`; takes the same arguments."""

    def __init__(self, server_url: str | None = None, token: str | None = None, **kwargs: Any):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="chatbridge-client", daemon=True
        )
        self._thread.start()
        self._closed = False

        async def make() -> AsyncChatClient:
            return AsyncChatClient(server_url, token, **kwargs)

        try:
            self.aio = self._call(make())
        except BaseException:
            self._stop_loop()
            raise
        self._sessions: dict[str, Session] = {}

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
        timeout: float | None = 30.0,
    ) -> Session:
        """A handle on a session (created if missing, watched; see `AsyncChatClient.session`)."""
        handle = self._sessions.get(session_id)
        if handle is None:
            handle = Session(self, session_id)
            self._sessions[session_id] = handle
        handle.aio = self._call(
            self.aio.session(session_id, create=create, after_seq=after_seq, attach=attach),
            timeout,
        )
        handle._subscribe()
        return handle

    def list_sessions(self) -> list[dict[str, Any]]:
        """Every session on the server."""
        return self._call(self.aio.list_sessions())

    def create_session(self, session_id: str | None = None, *, exist_ok: bool = False) -> Any:
        """Create a session (see `AsyncChatClient.create_session`)."""
        return self._call(self.aio.create_session(session_id, exist_ok=exist_ok))

    def delete_session(self, session_id: str) -> None:
        """Delete a session."""
        self._call(self.aio.delete_session(session_id))

    def history(
        self, session_id: str, after: int = 0, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """A session's stored events after `after`."""
        return self._call(self.aio.history(session_id, after, limit))

    def close(self) -> None:
        """Stop the client and its thread; nothing is left running (idempotent)."""
        if self._closed:
            return
        try:
            self._call(self.aio.close(), 30)
        finally:
            self._closed = True
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class Session:
    """Blocking handle on one session."""

    def __init__(self, client: ChatClient, session_id: str) -> None:
        self.client = client
        self.id = session_id
        self.aio: AsyncSession
        self._inbox: queue.Queue[Any] = queue.Queue(MAX_BUFFERED_EVENTS)
        self._subscribed = False

    def _subscribe(self) -> None:
        if not self._subscribed:
            self._subscribed = True
            self.aio.add_listener(self._offer)

    def _offer(self, event: dict[str, Any]) -> None:
        # Bounded like AsyncSession.events(): a reader that stops must not grow memory.
        with contextlib.suppress(queue.Full):
            self._inbox.put_nowait(event)

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
                event = self._inbox.get(timeout=timeout)
            except queue.Empty:
                return
            yield event
            if event.get("type") == "session_ended":
                return

    def history(self, after: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """The session's stored events after `after`."""
        return self.client.history(self.id, after, limit)

    def attach(self) -> None:
        """Drive this session from this client."""
        self.client._call(self.aio.attach())

    def delete(self) -> None:
        """Delete the session on the server."""
        self.client._call(self.aio.delete())
