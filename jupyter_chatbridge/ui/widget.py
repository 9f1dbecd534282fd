"""`ChatWidget`: a chat panel for notebooks, built from ipywidgets' own controls.

::

    from jupyter_chatbridge import ChatWidget
    ChatWidget("demo")   # creates or joins session "demo" on this kernel's Jupyter server

Threads: the widget owns a private asyncio loop in a daemon thread. The
client (`AsyncChatClient`, one for the widget's life: its outbox is the only
outbox, its stream reconnects with the same cid), the view state (`ChatView`)
and every redraw live on that thread, so the answer keeps streaming into the panel while a cell
blocks the kernel (a kernel's own asyncio loop stalls then). ipykernel sends
widget updates from any thread through its IOPub thread. Widgets themselves
(comms) are made and closed only on the kernel's main thread (see
`kernel_thread`): a new message is drawn into a waiting-rows widget until the
kernel's thread has made its row. The kernel's main
thread only reads the input box and hands actions to the loop; clicks and
Enter are delivered by the kernel, so, as for every ipywidget, they wait until
the running cell finishes.

Identity: the cid is the widget's comm id (`model_id`) formatted as a UUID.
The widget lives in the kernel, so a page reload shows the same widget, on the
same connection, still driving its session.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Final, TypeVar

import ipywidgets as widgets  # type: ignore[import-untyped]

from ..client.api import AsyncChatClient, AsyncSession
from ..client.discovery import discover_server
from ..client.outbox import OutboxEvent, OutboxFull
from ..client.stream import StreamClosed
from ..client.transport import HTTPStatusError, TransportError
from ..protocol import EventType, cid_from_hex, is_valid_session_id
from ..protocol.rules import after_expiry
from ..protocol.status import ConnectionStatus, StatusChange
from .chatview import ChatView, Delivery
from .kernel_thread import KernelThread
from .loop_thread import LoopThread
from .panel import ChatPanel, close_widget

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


class ChatWidget(widgets.VBox):  # type: ignore[misc]
    """A chat panel on one session: messages with the answer streaming in, input, status.

    `ChatWidget("demo")` creates session "demo" if it does not exist, joins it
    otherwise, shows its conversation so far and drives it. With no
    `server_url`, it finds the Jupyter server its kernel belongs to (see
    `jupyter_chatbridge.client.discover_server`). `client_options` are passed
    to `AsyncChatClient` (e.g. `retry_delay`, `request_timeout`); at most
    `max_messages` messages are drawn, the most recent ones.

    `close()` stops the client and its thread and removes the panel. The kernel keeps
    every widget alive until it is closed (ipywidgets' registry and the comm table hold
    it, since a front end may still show it), so a dropped widget is not collected; a
    new `ChatWidget` on the same server and session closes the one before it, so a cell
    run again leaves one panel running, not one per run.
    """

    # The open widget of each (server, session) in this kernel: a re-run cell replaces it.
    _current: ClassVar[weakref.WeakValueDictionary[tuple[str, str], ChatWidget]] = (
        weakref.WeakValueDictionary()
    )

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
        self._kernel = KernelThread.of_this_kernel()
        self._panel = ChatPanel(
            height=height,
            max_messages=max_messages,
            on_text=self._take_text,
            on_retry=self.retry,
            on_banner_action=self._banner_action,
            on_status_action=self._status_action,
            kernel=self._kernel,
            on_rows_made=lambda: self._looper.call_soon(self._render_soon),
        )
        kwargs.setdefault("layout", widgets.Layout(width="100%", max_width="900px"))
        super().__init__(children=self._panel.children, **kwargs)
        self.session_id = session_id
        # The comm id is made once per widget and survives page reloads: our stable cid.
        self.cid = cid_from_hex(self.model_id)
        self.view = ChatView(session_id)
        self._client: AsyncChatClient | None = None
        self._handle: AsyncSession | None = None
        self._gap_task: asyncio.Task[None] | None = None
        self._close_lock = threading.Lock()
        self._open_lock: asyncio.Lock | None = None
        self._setting_up = True
        # This panel drives its session (attached, not detached since): what a connection
        # the server no longer holds (`resumed: false`) must restore or explain.
        self._driving = False
        self._opened = False  # the session was opened once (a later open is a reconnect)
        self._render_handle: asyncio.TimerHandle | None = None
        self._last_render = 0.0
        self._looper = LoopThread(f"chatbridge-widget-{session_id}")
        self._loop, self._thread = self._looper.loop, self._looper.thread
        self._looper.call_soon(self._boot)
        self.comm.on_close(self._closed_by_frontend)
        previous = ChatWidget._current.get((server_url, session_id))
        ChatWidget._current[(server_url, session_id)] = self
        if previous is not None:
            previous.close()

    # -- public API (any thread) -------------------------------------------------------------

    def send_message(self, text: str) -> str:
        """Send `text` as if typed; returns its clientMsgId. Raises `OutboxFull` when full."""
        if self._closed:
            raise RuntimeError("this ChatWidget is closed")
        return self._on_loop(lambda: self._send_on_loop(text))

    def retry(self, client_msg_id: str) -> None:
        """Send a message that was not delivered again (same clientMsgId: no duplicate)."""
        self._looper.call_soon(lambda: self._retry_on_loop(client_msg_id))

    def reconnect(self) -> None:
        """Reconnect after the stream gave up (same cid: the server keeps our state)."""
        self._looper.call_soon(lambda: self._looper.spawn(self._open(reconnect=True)))

    def start_new_session(self) -> None:
        """Start the session again under the same id, after it was deleted."""
        self._looper.call_soon(lambda: self._looper.spawn(self._open(new_session=True)))

    def take_over(self) -> None:
        """Drive the session from here again after another client took it over."""
        self._looper.call_soon(lambda: self._looper.spawn(self._attach()))

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
            self._kernel.drain()  # on the kernel's thread, its rows cannot wait for it
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
            self._looper.call_soon(lambda: self._refuse(error))
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

    def _on_loop(self, function: Callable[[], T]) -> T:
        return self._looper.call(function, LOOP_CALL_TIMEOUT)

    # -- on the loop thread ---------------------------------------------------------------------

    def _boot(self) -> None:
        self._client = self._make_client()
        self._looper.spawn(self._open())

    def _make_client(self) -> AsyncChatClient:
        def on_status(change: StatusChange) -> None:
            if not self._closed:
                self.view.status_changed(change)
                self._render_soon()

        def on_send(event: OutboxEvent) -> None:
            if not self._closed:
                self.view.outbox_event(event)
                self._render_soon()

        def on_frame(kind: str, data: dict[str, Any]) -> None:
            if kind == EventType.WELCOME and not self._closed and not data.get("resumed"):
                if self._driving:
                    self._looper.spawn(self._after_expiry())
                return
            if self._closed or data.get("sessionId") != self.session_id:
                return
            if kind == EventType.DETACHED:
                self._driving = False
                self.view.detached(str(data.get("reason")))
            elif kind == "rewound" and isinstance(data.get("lastSeq"), int):
                self.view.rewound(data["lastSeq"])
            self._render_soon()

        client = AsyncChatClient(
            self._server_url,
            self._token,
            **self._client_options,
            cid=self.cid,
            on_status=on_status,
            on_send=on_send,
            on_frame=on_frame,
        )
        # Typed before the session is open: queued (and shown pending), posted once it is.
        client.outbox.hold()
        return client

    async def _open(self, *, reconnect: bool = False, new_session: bool = False) -> None:
        """(Re)open the session on our one client, then follow its events."""
        if self._open_lock is None:
            self._open_lock = asyncio.Lock()
        client = self._client
        if client is None or self._closed:
            return
        async with self._open_lock:
            self._setting_up = True
            client.outbox.hold()
            if new_session:
                self.view.new_session()
            if reconnect:
                client.reconnect()
            self._render_soon()
            # Drive it on the first open and for a new session; a reconnect keeps what the
            # server says (rules.after_expiry decides on `resumed: false`), so it never
            # takes the session back from a client that took over meanwhile.
            attach = new_session or not self._opened
            handle = client.handle(self.session_id)
            if handle is not self._handle:
                # Before watching: the replay of the conversation so far must reach the view.
                self._handle = handle
                handle.add_listener(self._on_event)
                handle.add_lost_listener(self._on_lost)
            try:
                await client.connect()
                # From the start (the conversation so far), or after what is shown.
                await client.session(
                    self.session_id, create=True, after_seq=self.view.last_seq, attach=attach
                )
            except StreamClosed:
                return  # the status line and banner already say why
            except HTTPStatusError as exc:
                if exc.status == 404:
                    self.view.session_lost("session_unknown")
                else:
                    self.view.setup_failed(str(exc))
                return
            except (TransportError, OSError, asyncio.TimeoutError) as exc:
                self.view.setup_failed(f"{type(exc).__name__}: {exc}")
                return
            finally:
                self._setting_up = False
                self._render_soon()
            self._opened = True
            if attach:
                self._driving = True
                self.view.session_opened()
            else:
                self.view.session_watched()
            client.outbox.release()
            self._render_soon()

    def _on_event(self, event: dict[str, Any]) -> None:
        if self._closed:
            return
        self.view.session_event(event)
        if self.view.gap is not None and self._gap_task is None:
            self._gap_task = self._loop.create_task(self._fill_gap())
        self._render_soon()

    async def _fill_gap(self) -> None:
        gap, handle = self.view.gap, self._handle
        try:
            if gap is None or handle is None:
                return
            events = await handle.gap_history(gap)
        finally:
            self._gap_task = None
        self.view.history(events)
        self._render_soon()

    def _on_lost(self, reason: str) -> None:
        if not self._closed and reason in ("session_ended", "session_unknown"):
            self.view.session_lost(reason)
            self._render_soon()

    def _send_on_loop(self, text: str) -> str:
        if self._client is None:
            raise RuntimeError("this ChatWidget is closed")
        return self._client.send(self.session_id, text)

    def _retry_on_loop(self, client_msg_id: str) -> None:
        entry = self.view.own(client_msg_id)
        client = self._client
        if client is None or entry is None or entry.delivery is not Delivery.FAILED:
            return
        if not entry.retry_offered:
            return
        try:
            if client_msg_id in client.outbox.failed:
                client.outbox.retry(client_msg_id)
            else:
                # The outbox no longer holds it (the server lost it, or it was forgotten):
                # the same clientMsgId again, so the server's dedup keeps it single.
                client.send(self.session_id, entry.text, client_msg_id)
        except OutboxFull as exc:
            self.view.send_refused(str(exc))
        self._render_soon()

    def _refuse(self, error: str) -> None:
        self.view.send_refused(error)
        self._render_soon()

    async def _attach(self) -> None:
        client = self._client
        if client is None or self._handle is None:
            return
        try:
            await client.stream.call("attach", self.session_id)
        except (HTTPStatusError, TransportError, StreamClosed) as exc:
            log.warning("chatbridge widget: take over failed: %s", exc)
            return
        self._driving = True
        self.view.session_opened()
        self._render_soon()

    async def _after_expiry(self) -> None:
        """The server no longer held our connection (it expired, or the server restarted):
        drive the session again unless another client took over (rules.after_expiry)."""
        client = self._client
        if client is None:
            return
        try:
            described = await client.get_session(self.session_id)
        except (HTTPStatusError, TransportError, OSError, asyncio.TimeoutError) as exc:
            log.warning("chatbridge widget: could not read the session's driver: %s", exc)
            return
        own_id = f"{client.stream.connection_id or self.cid}:{self.session_id}"
        action = after_expiry(self._driving, described.get("driver"), own_id)
        if action == "attach":
            await self._attach()
        elif action == "taken_over":
            self._driving = False
            self.view.detached("taken_over")
            self._render_soon()

    def _idle(self) -> bool:
        return (
            not self._setting_up
            and self.view.status not in _WAITING_STATUSES
            and not self.view.thinking
            and not any(e.delivery is Delivery.RETRYING for e in self.view.unfinished)
            and self._render_handle is None
            and not self._panel.rows_pending
        )

    async def _shutdown(self) -> None:
        if self._render_handle is not None:
            self._render_handle.cancel()
            self._render_handle = None
        client, self._client = self._client, None  # its callbacks are now ignored
        if client is not None:
            await client.close()
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
        self._looper.stop(self._shutdown(), LOOP_CALL_TIMEOUT)
        # Comms are closed on the kernel's thread: at once if this is it, else at its next turn.
        self._kernel.run(self._close_widgets)

    def _close_widgets(self) -> None:
        self._panel.close()
        layout = self.layout
        super().close()
        close_widget(layout)

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
        if (not changes and not self._panel.rows_made) or self._closed:
            return
        try:
            self._panel.draw(self.view, changes)
        except Exception:  # a drawing bug must not kill the client's loop
            log.exception("chatbridge widget: redraw failed")
