"""`ChatWidget`: a chat panel for notebooks, built from ipywidgets' own controls.

::

    from jupyter_chatbridge import ChatWidget
    ChatWidget("demo")   # creates or joins session "demo" on this kernel's Jupyter server

Threads: the widget owns a private asyncio loop in a daemon thread. The
client (`AsyncChatClient`), the view state (`ChatView`) and every redraw live
on that thread, so the answer keeps streaming into the panel while a cell
blocks the kernel (a kernel's own asyncio loop stalls then). ipykernel sends
widget updates from any thread through its IOPub thread. The kernel's main
thread only reads the input box and hands actions to the loop; clicks and
Enter are delivered by the kernel, so, as for every ipywidget, they wait until
the running cell finishes.

Identity: the cid is the widget's comm id (`model_id`) formatted as a UUID.
The widget lives in the kernel, so a page reload shows the same widget, on the
same connection, still driving its session.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import logging
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import ipywidgets as widgets  # type: ignore[import-untyped]

from ..client.api import AsyncChatClient
from ..client.discovery import discover_server
from ..client.outbox import OutboxEvent, OutboxFull, new_client_msg_id
from ..client.stream import ConnectionStatus, StatusChange, StreamClosed
from ..client.transport import HTTPStatusError, TransportError
from ..protocol import EventType, cid_from_hex, is_valid_session_id
from .chatview import ChatView, Delivery
from .panel import ChatPanel

log = logging.getLogger(__name__)

T = TypeVar("T")

# Redraws are coalesced: a fast agent must not flood the kernel's IOPub with
# one message per chunk. 20 redraws a second still reads as live streaming.
RENDER_INTERVAL: Final = 0.05
# Seconds to wait for the loop thread to answer a call from the kernel's thread.
LOOP_CALL_TIMEOUT: Final = 10.0
_WAITING_STATUSES: Final = frozenset(
    {ConnectionStatus.IDLE, ConnectionStatus.CONNECTING, ConnectionStatus.RECONNECTING}
)


# -- the widget -----------------------------------------------------------------------------


@dataclass
class _Link:
    """One client instance; callbacks of a replaced client are recognised and ignored."""

    client: AsyncChatClient | None = None
    ready: bool = False  # the session is watched: sends may go out


class ChatWidget(widgets.VBox):  # type: ignore[misc]
    """A chat panel on one session: messages with the answer streaming in, input, status.

    `ChatWidget("demo")` creates session "demo" if it does not exist, joins it
    otherwise, shows its conversation so far and drives it. With no
    `server_url`, it finds the Jupyter server its kernel belongs to (see
    `jupyter_chatbridge.client.discover_server`). `client_options` are passed
    to `AsyncChatClient` (e.g. `retry_delay`, `request_timeout`); at most
    `max_messages` messages are drawn, the most recent ones.

    `close()` stops the client and its thread and removes the panel.
    """

    def __init__(
        self,
        session_id: str,
        server_url: str | None = None,
        token: str | None = None,
        *,
        client_options: Mapping[str, Any] | None = None,
        max_messages: int = 100,
        height: str = "360px",
        **kwargs: Any,
    ) -> None:
        if not is_valid_session_id(session_id):
            raise ValueError(f"not a valid session id: {session_id!r}")
        if server_url is None:
            # Before any thread starts: a kernel with no server to find fails at once.
            server_url, found_token = discover_server()
            token = token if token is not None else found_token
        if not server_url.startswith(("http://", "https://")):
            raise ValueError(f"server_url must start with http:// or https://: {server_url!r}")
        self._server_url = server_url
        self._token = token
        self._client_options = dict(client_options or {})
        self._closed = False
        self._panel = ChatPanel(
            height=height,
            max_messages=max_messages,
            on_text=self._take_text,
            on_retry=self.retry,
            on_banner_action=self._banner_action,
            on_status_action=self._status_action,
        )
        kwargs.setdefault("layout", widgets.Layout(width="100%", max_width="900px"))
        super().__init__(children=self._panel.children, **kwargs)
        self.session_id = session_id
        # The comm id is made once per widget and survives page reloads: our stable cid.
        self.cid = cid_from_hex(self.model_id)
        self.view = ChatView(session_id)
        self._link = _Link()
        self._close_lock = threading.Lock()
        self._swap_lock: asyncio.Lock | None = None
        self._setting_up = True
        self._render_handle: asyncio.TimerHandle | None = None
        self._last_render = 0.0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"chatbridge-widget-{session_id}", daemon=True
        )
        self._thread.start()
        self._call_soon(lambda: self._spawn(self._start(after_seq=0)))
        self.comm.on_close(self._closed_by_frontend)

    # -- public API (any thread) -------------------------------------------------------------

    def send_message(self, text: str) -> str:
        """Send `text` as if typed; returns its clientMsgId. Raises `OutboxFull` when full."""
        if self._closed:
            raise RuntimeError("this ChatWidget is closed")
        return self._on_loop(lambda: self._send_on_loop(text))

    def retry(self, client_msg_id: str) -> None:
        """Send a message that was not delivered again (same clientMsgId: no duplicate)."""
        self._call_soon(lambda: self._retry_on_loop(client_msg_id))

    def reconnect(self) -> None:
        """Reconnect after the stream gave up (same cid: the server keeps our state)."""
        self._call_soon(lambda: self._spawn(self._start(after_seq=self.view.last_seq)))

    def start_new_session(self) -> None:
        """Start the session again under the same id, after it was deleted."""
        self._call_soon(lambda: self._spawn(self._start(after_seq=0, new_session=True)))

    def take_over(self) -> None:
        """Drive the session from here again after another client took it over."""
        self._call_soon(lambda: self._spawn(self._attach()))

    def summary(self) -> dict[str, Any]:
        """A snapshot of what the panel shows: status, banner, thinking, messages."""
        summary = self._on_loop(self.view.summary)
        summary["cid"] = self.cid
        return summary

    @property
    def thinking(self) -> bool:
        """True while the agent is answering (or about to answer) a message."""
        return self._on_loop(lambda: self.view.thinking)

    def wait_until_idle(self, timeout: float = 30.0) -> bool:
        """Block until nothing is in flight and the panel is drawn; False on time-out.

        For scripts and notebooks that want to read the result of a send.
        """
        deadline = time.monotonic() + timeout
        while not self._on_loop(self._idle):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def close(self) -> None:
        """Stop the client and its thread, and remove the panel; idempotent."""
        lock = getattr(self, "_close_lock", None)
        if lock is None:  # __init__ failed before the thread existed
            super().close()
            return
        with lock:
            if self._closed:
                return
            self._closed = True
        if threading.current_thread() is self._thread:
            # Called from our own loop (a callback): finish from another thread.
            threading.Thread(target=self._finish_close, daemon=True).start()
        else:
            self._finish_close()

    # -- kernel-thread handlers -----------------------------------------------------------------

    def _take_text(self, text: str) -> bool:
        if self._closed:
            return False
        try:
            self.send_message(text)
        except OutboxFull as exc:
            error = str(exc)
            self._call_soon(lambda: self._refuse(error))
            return False
        return True

    def _banner_action(self) -> None:
        banner = self._on_loop(lambda: self.view.banner)
        if banner is None:
            return
        if banner.kind == "session_unknown":
            self.start_new_session()
        else:
            self.reconnect()

    def _status_action(self) -> None:
        action = self._on_loop(lambda: self.view.status_action)
        if action == "Reconnect":
            self.reconnect()
        elif action == "Take over":
            self.take_over()

    def _closed_by_frontend(self, _msg: Any) -> None:
        self.close()

    # -- loop plumbing ----------------------------------------------------------------------------

    def _submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def _call_soon(self, callback: Callable[[], Any]) -> None:
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(callback)

    def _on_loop(self, function: Callable[[], T]) -> T:
        """Run `function` on the loop thread (which owns the state) and return its result."""
        if threading.current_thread() is self._thread or not self._loop.is_running():
            return function()  # on the loop already, or stopped: nothing else touches it

        async def call() -> T:
            return function()

        return self._submit(call()).result(LOOP_CALL_TIMEOUT)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = self._loop.create_task(coro)
        task.add_done_callback(_log_failure)

    # -- on the loop thread ---------------------------------------------------------------------

    def _make_client(self, link: _Link) -> AsyncChatClient:
        def on_status(change: StatusChange) -> None:
            if link is self._link:
                self.view.status_changed(change)
                self._render_soon()

        def on_send(event: OutboxEvent) -> None:
            if link is self._link:
                self.view.outbox_event(event)
                self._render_soon()

        def on_frame(kind: str, data: dict[str, Any]) -> None:
            if (
                link is self._link
                and kind == EventType.DETACHED
                and data.get("sessionId") == self.session_id
            ):
                self.view.detached(str(data.get("reason")))
                self._render_soon()

        return AsyncChatClient(
            self._server_url,
            self._token,
            **self._client_options,
            cid=self.cid,
            on_status=on_status,
            on_send=on_send,
            on_frame=on_frame,
        )

    async def _start(self, *, after_seq: int, new_session: bool = False) -> None:
        """(Re)open the session on a fresh client with our cid, then follow its events."""
        if self._swap_lock is None:
            self._swap_lock = asyncio.Lock()
        async with self._swap_lock:
            old = self._link
            link = self._link = _Link()
            self._setting_up = True
            if old.client is not None:
                await old.client.close()
            if self._closed:
                return
            if new_session:
                self.view.new_session()
            link.client = self._make_client(link)
        self._render_soon()
        try:
            try:
                await link.client.connect()
                handle = await link.client.session(
                    self.session_id, create=True, after_seq=after_seq, attach=True
                )
            except StreamClosed:
                return  # the status line and banner already say why
            except HTTPStatusError as exc:
                if link is self._link:
                    if exc.status == 404:
                        self.view.session_lost("session_unknown")
                    else:
                        self.view.setup_failed(str(exc))
                return
            except (TransportError, OSError, asyncio.TimeoutError) as exc:
                if link is self._link:
                    self.view.setup_failed(f"{type(exc).__name__}: {exc}")
                return
        finally:
            if link is self._link:
                self._setting_up = False
                self._render_soon()
        if link is not self._link:
            return
        link.ready = True
        self.view.session_opened()
        # Messages typed before the session was open, or left in a replaced client's
        # outbox: same clientMsgId, so the server's dedup makes a resend harmless.
        for entry in self.view.unfinished:
            assert entry.client_msg_id is not None
            try:
                link.client.send(self.session_id, entry.text, entry.client_msg_id)
            except OutboxFull as exc:
                self.view.send_refused(str(exc))
                break
        self._render_soon()
        async for event in handle.events():
            if link is not self._link:
                return
            self.view.session_event(event)
            self._render_soon()
        if link is self._link and handle.lost in ("session_ended", "session_unknown"):
            self.view.session_lost(handle.lost)
            self._render_soon()

    def _send_on_loop(self, text: str) -> str:
        link = self._link
        if link.ready and link.client is not None:
            return link.client.send(self.session_id, text)
        # Not open yet (or being reopened): show it as pending; `_start` sends it.
        client_msg_id = new_client_msg_id()
        self.view.outbox_event(OutboxEvent("send_pending", self.session_id, client_msg_id, text))
        self._render_soon()
        return client_msg_id

    def _retry_on_loop(self, client_msg_id: str) -> None:
        entry = self.view.own(client_msg_id)
        if entry is None or entry.delivery is not Delivery.FAILED:
            return
        link = self._link
        try:
            if link.ready and link.client is not None:
                if client_msg_id in link.client.outbox.failed:
                    link.client.outbox.retry(client_msg_id)
                else:
                    link.client.send(self.session_id, entry.text, client_msg_id)
            else:
                self.view.outbox_event(
                    OutboxEvent("send_pending", self.session_id, client_msg_id, entry.text)
                )
        except OutboxFull as exc:
            self.view.send_refused(str(exc))
        self._render_soon()

    def _refuse(self, error: str) -> None:
        self.view.send_refused(error)
        self._render_soon()

    async def _attach(self) -> None:
        link = self._link
        if not link.ready or link.client is None:
            return
        try:
            await link.client.stream.call("attach", self.session_id)
        except (HTTPStatusError, TransportError, StreamClosed) as exc:
            log.warning("chatbridge widget: take over failed: %s", exc)
            return
        if link is self._link:
            self.view.session_opened()
            self._render_soon()

    def _idle(self) -> bool:
        return (
            not self._setting_up
            and self.view.status not in _WAITING_STATUSES
            and not self.view.thinking
            and not any(e.delivery is Delivery.RETRYING for e in self.view.unfinished)
            and self._render_handle is None
        )

    async def _shutdown(self) -> None:
        if self._render_handle is not None:
            self._render_handle.cancel()
            self._render_handle = None
        link = self._link
        self._link = _Link()  # callbacks of the closing client are now ignored
        if link.client is not None:
            await link.client.close()
        self.view.status_changed(StatusChange(ConnectionStatus.CLOSED))
        # Whatever is left (a setup waiting on the closed client, a reader): cancel and wait.
        current = asyncio.current_task()
        rest = [task for task in asyncio.all_tasks() if task is not current]
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    def _finish_close(self) -> None:
        if sys.is_finalizing():  # interpreter exit: the daemon thread dies with it
            return
        if self._loop.is_running():
            with contextlib.suppress(Exception):
                self._submit(self._shutdown()).result(LOOP_CALL_TIMEOUT)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(LOOP_CALL_TIMEOUT)
        if not self._thread.is_alive() and not self._loop.is_closed():
            self._loop.close()
        self._panel.close()
        super().close()

    # -- drawing (loop thread only) ------------------------------------------------------------

    def _render_soon(self) -> None:
        if self._render_handle is not None or self._closed:
            return
        delay = max(0.0, self._last_render + RENDER_INTERVAL - self._loop.time())
        # An empty context: ipykernel then stamps our widget messages with the request it
        # is handling now, not with whichever cell happened to start the task that asked
        # for this redraw (front ends that route messages by parent would drop them).
        self._render_handle = self._loop.call_later(
            delay, self._render, context=contextvars.Context()
        )

    def _render(self) -> None:
        self._render_handle = None
        self._last_render = self._loop.time()
        changes = self.view.take_changes()
        if not changes or self._closed:
            return
        try:
            self._panel.draw(self.view, changes)
        except Exception:  # a drawing bug must not kill the client's loop
            log.exception("chatbridge widget: redraw failed")


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("chatbridge widget: background task failed", exc_info=task.exception())
