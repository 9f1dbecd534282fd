"""`ChatWidget`: a chat panel for notebooks, built from ipywidgets' own controls.

::

    from jupyter_chatbridge import ChatWidget
    ChatWidget("demo")   # creates or joins session "demo" on this kernel's Jupyter server

Threads: the widget owns a private asyncio loop in a daemon thread. The client and
what it does for the panel (`session_link`), the view state (`ChatView`) and every
redraw live on that thread, so the answer keeps streaming into the panel while a cell
blocks the kernel (a kernel's own asyncio loop stalls then). ipykernel sends widget
updates from any thread through its IOPub thread. Widgets themselves (comms) are made
and closed only on the kernel's main thread (see `kernel_thread`): a new message is
drawn into a waiting-rows widget until the kernel's thread has made its row. The
kernel's main thread only reads the input box and hands actions (Send, Stop, Retry) to
the loop; clicks and Enter are delivered by the kernel, so, as for every ipywidget,
they wait until the running cell finishes.

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

from ..client.discovery import discover_server
from ..client.outbox import OutboxFull
from ..protocol import cid_from_hex, is_valid_session_id
from .chatview import ChatView
from .kernel_thread import KernelThread
from .loop_thread import LoopThread
from .panel import ChatPanel, close_widget
from .session_link import SessionLink
from .sidebar import open_sidebar

log = logging.getLogger(__name__)

T = TypeVar("T")

# Redraws are coalesced: a fast agent must not flood the kernel's IOPub with
# one message per chunk. 20 redraws a second still reads as live streaming.
RENDER_INTERVAL: Final = 0.05
# Seconds to wait for the loop thread to answer a call from the kernel's thread.
LOOP_CALL_TIMEOUT: Final = 10.0


# -- the widget -----------------------------------------------------------------------------


class ChatWidget(widgets.VBox):  # type: ignore[misc]
    """A chat panel on one session: messages with the answer streaming in, input, status.

    `ChatWidget("demo")` creates session "demo" if it does not exist, joins it
    otherwise, shows its conversation so far and drives it. With no
    `server_url`, it finds the Jupyter server its kernel belongs to (see
    `jupyter_chatbridge.client.discover_server`). `client_options` are passed
    to `AsyncChatClient` (e.g. `retry_delay`, `request_timeout`); at most
    `max_messages` messages are drawn, the most recent ones.

    Answers are drawn as Markdown, sanitized (`markdown`); your own messages as the
    plain text they are. While an answer streams, **Stop** (or `stop()`) ends it.
    `show_in_sidebar()` puts the panel in JupyterLab's right-hand area.

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
        self._closed = False
        self._kernel = KernelThread.of_this_kernel()
        self._panel = ChatPanel(
            height=height,
            max_messages=max_messages,
            on_text=self._take_text,
            on_retry=self.retry,
            on_banner_action=self._banner_action,
            on_status_action=self._status_action,
            on_stop=self.stop,
            kernel=self._kernel,
            on_rows_made=lambda: self._looper.call_soon(self._render_soon),
        )
        kwargs.setdefault("layout", widgets.Layout(width="100%", max_width="900px"))
        super().__init__(children=self._panel.children, **kwargs)
        self.session_id = session_id
        # The comm id is made once per widget and survives page reloads: our stable cid.
        self.cid = cid_from_hex(self.model_id)
        self.view = ChatView(session_id)
        self._close_lock = threading.Lock()
        self._render_handle: asyncio.TimerHandle | None = None
        self._last_render = 0.0
        self._sidebar: widgets.Widget | None = None
        self._looper = LoopThread(f"chatbridge-widget-{session_id}")
        self._loop, self._thread = self._looper.loop, self._looper.thread
        self._link = SessionLink(
            session_id=session_id,
            cid=self.cid,
            server_url=server_url,
            token=token,
            client_options=client_options or {},
            view=self.view,
            looper=self._looper,
            redraw=self._render_soon,
            is_closed=lambda: self._closed,
        )
        self._looper.call_soon(self._link.boot)
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
        return self._on_loop(lambda: self._link.send(text))

    def retry(self, client_msg_id: str) -> None:
        """Send a message that was not delivered again (same clientMsgId: no duplicate)."""
        self._looper.call_soon(lambda: self._link.retry(client_msg_id))

    def reconnect(self) -> None:
        """Reconnect after the stream gave up (same cid: the server keeps our state)."""
        self._looper.call_soon(lambda: self._looper.spawn(self._link.open(reconnect=True)))

    def start_new_session(self) -> None:
        """Start the session again under the same id, after it was deleted."""
        self._looper.call_soon(lambda: self._looper.spawn(self._link.open(new_session=True)))

    def take_over(self) -> None:
        """Drive the session from here again after another client took it over."""
        self._looper.call_soon(lambda: self._looper.spawn(self._link.attach()))

    def stop(self, message_id: str | None = None) -> None:
        """Stop the answer streaming now (or the one whose messageId is given), as the
        Stop button does. It keeps the text it had and is marked stopped; messages queued
        behind it are still answered. Repeating it is harmless; a failure is shown next to
        the answer."""
        self._looper.call_soon(lambda: self._looper.spawn(self._link.stop(message_id)))

    def show_in_sidebar(self, title: str | None = None) -> Any:
        """Show this panel in JupyterLab's right-hand area (call it from a cell), and
        return the `sidecar.Sidecar` that holds it. It needs the sidebar extra:
        `pip install "jupyter_chatbridge[sidebar]"`. Calling it again moves the panel
        to a new sidebar tab; `close()` closes the tab too."""
        sidebar = open_sidebar(self, title or f"Chat: {self.session_id}")
        previous, self._sidebar = self._sidebar, sidebar
        if previous is not None:
            close_widget(previous)
        return sidebar

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
            self._looper.call_soon(lambda: self._link.refuse(error))
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

    def _idle(self) -> bool:
        return (
            not self._link.busy
            and self._render_handle is None
            and self._panel.redraw_in is None
            and not self._panel.rows_pending
        )

    async def _shutdown(self) -> None:
        if self._render_handle is not None:
            self._render_handle.cancel()
            self._render_handle = None
        await self._link.close()
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
        if self._sidebar is not None:
            close_widget(self._sidebar)
        self._panel.close()
        layout = self.layout
        super().close()
        close_widget(layout)

    # -- drawing (loop thread only) ------------------------------------------------------------

    def _render_soon(self, wait: float = 0.0) -> None:
        if self._render_handle is not None or self._closed:
            return
        delay = max(wait, self._last_render + RENDER_INTERVAL - self._loop.time())
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
        due = self._panel.redraw_in is not None  # a long answer waits to be drawn again
        if (not changes and not self._panel.rows_made and not due) or self._closed:
            return
        try:
            self._panel.draw(self.view, changes)
        except Exception:  # a drawing bug must not kill the client's loop
            log.exception("chatbridge widget: redraw failed")
        wait = self._panel.redraw_in
        if wait is not None:
            self._render_soon(wait)
