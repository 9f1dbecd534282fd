"""The widget's side on its own loop: one client, the session it opens and follows into
the view, and what the panel's actions ask of the server (send, retry, take over, Stop).

Everything here runs on the widget's loop thread (`loop_thread`), which owns the client and
the `ChatView`; `ChatWidget` hands calls to it and draws what the view says.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any, Final

from ..client.api import AsyncChatClient, AsyncSession
from ..client.outbox import OutboxEvent, OutboxFull
from ..client.stream import StreamClosed
from ..client.transport import HTTPStatusError, TransportError
from ..protocol import EventType
from ..protocol.rules import after_expiry
from ..protocol.status import ConnectionStatus, StatusChange
from .chatview import ChatView, Delivery
from .loop_thread import LoopThread

log = logging.getLogger(__name__)

_WAITING_STATUSES: Final = frozenset(
    {ConnectionStatus.IDLE, ConnectionStatus.CONNECTING, ConnectionStatus.RECONNECTING}
)
# What a REST call can fail with, besides an answer with an error status.
_UNREACHABLE: Final = (TransportError, OSError, asyncio.TimeoutError)


class SessionLink:
    """One `AsyncChatClient` (for the widget's life: its outbox is the only outbox, its stream
    reconnects with the same cid) on one session, feeding `view`.

    `redraw()` asks for the panel to be drawn again; `is_closed()` says the widget closed,
    after which the client's callbacks change nothing.
    """

    def __init__(
        self,
        *,
        session_id: str,
        cid: str,
        server_url: str,
        token: str | None,
        client_options: Mapping[str, Any],
        view: ChatView,
        looper: LoopThread,
        redraw: Callable[[], None],
        is_closed: Callable[[], bool],
    ) -> None:
        self.session_id = session_id
        self.cid = cid
        self.view = view
        self._server_url = server_url
        self._token = token
        self._client_options = dict(client_options)
        self._looper = looper
        self._redraw = redraw
        self._is_closed = is_closed
        self.client: AsyncChatClient | None = None
        self.handle: AsyncSession | None = None
        self.setting_up = True
        # This panel drives its session (attached, not detached since): what a connection
        # the server no longer holds (`resumed: false`) must restore or explain.
        self._driving = False
        self._opened = False  # the session was opened once (a later open is a reconnect)
        self._gap_task: asyncio.Task[None] | None = None
        self._open_lock: asyncio.Lock | None = None

    # -- setting up ---------------------------------------------------------------------

    def boot(self) -> None:
        """Make the client and open the session."""
        self.client = self._make_client()
        self._looper.spawn(self.open())

    def _make_client(self) -> AsyncChatClient:
        def on_status(change: StatusChange) -> None:
            if not self._is_closed():
                self.view.status_changed(change)
                self._redraw()

        def on_send(event: OutboxEvent) -> None:
            if not self._is_closed():
                self.view.outbox_event(event)
                self._redraw()

        def on_frame(kind: str, data: dict[str, Any]) -> None:
            closed = self._is_closed()
            if kind == EventType.WELCOME and not closed and not data.get("resumed"):
                if self._driving:
                    self._looper.spawn(self._after_expiry())
                return
            if closed or data.get("sessionId") != self.session_id:
                return
            if kind == EventType.DETACHED:
                self._driving = False
                self.view.detached(str(data.get("reason")))
            elif kind == "rewound" and isinstance(data.get("lastSeq"), int):
                self.view.rewound(data["lastSeq"])
            self._redraw()

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

    async def open(self, *, reconnect: bool = False, new_session: bool = False) -> None:
        """(Re)open the session on our one client, then follow its events."""
        if self._open_lock is None:
            self._open_lock = asyncio.Lock()
        client = self.client
        if client is None or self._is_closed():
            return
        async with self._open_lock:
            self.setting_up = True
            client.outbox.hold()
            if new_session:
                self.view.new_session()
            if reconnect:
                client.reconnect()
            self._redraw()
            # Drive it on the first open and for a new session; a reconnect keeps what the
            # server says (rules.after_expiry decides on `resumed: false`), so it never
            # takes the session back from a client that took over meanwhile.
            attach = new_session or not self._opened
            handle = client.handle(self.session_id)
            if handle is not self.handle:
                # Before watching: the replay of the conversation so far must reach the view.
                self.handle = handle
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
            except _UNREACHABLE as exc:
                self.view.setup_failed(f"{type(exc).__name__}: {exc}")
                return
            finally:
                self.setting_up = False
                self._redraw()
            self._opened = True
            if attach:
                self._driving = True
                self.view.session_opened()
            else:
                self.view.session_watched()
            client.outbox.release()
            self._redraw()

    # -- following the session ------------------------------------------------------------

    def _on_event(self, event: dict[str, Any]) -> None:
        if self._is_closed():
            return
        self.view.session_event(event)
        if self.view.gap is not None and self._gap_task is None:
            self._gap_task = asyncio.get_running_loop().create_task(self._fill_gap())
        self._redraw()

    async def _fill_gap(self) -> None:
        gap, handle = self.view.gap, self.handle
        try:
            if gap is None or handle is None:
                return
            events = await handle.gap_history(gap)
        finally:
            self._gap_task = None
        self.view.history(events)
        self._redraw()

    def _on_lost(self, reason: str) -> None:
        if not self._is_closed() and reason in ("session_ended", "session_unknown"):
            self.view.session_lost(reason)
            self._redraw()

    # -- the panel's actions ----------------------------------------------------------------

    def send(self, text: str) -> str:
        """Queue `text`; returns its clientMsgId. Raises `OutboxFull` when full."""
        if self.client is None:
            raise RuntimeError("this ChatWidget is closed")
        return self.client.send(self.session_id, text)

    def retry(self, client_msg_id: str) -> None:
        """Send a message that was finally not delivered again, with its clientMsgId."""
        entry = self.view.own(client_msg_id)
        client = self.client
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
        self._redraw()

    def refuse(self, error: str) -> None:
        """A message was not even queued: say so at the input."""
        self.view.send_refused(error)
        self._redraw()

    async def attach(self) -> None:
        """Drive the session from here (again)."""
        client = self.client
        if client is None or self.handle is None:
            return
        try:
            await client.stream.call("attach", self.session_id)
        except (HTTPStatusError, TransportError, StreamClosed) as exc:
            log.warning("chatbridge widget: take over failed: %s", exc)
            return
        self._driving = True
        self.view.session_opened()
        self._redraw()

    async def stop(self, message_id: str | None = None) -> None:
        """Stop the answer `message_id` (None: the one streaming now). Only one request per
        answer is on its way at a time; the outcome is shown next to the answer."""
        view, handle = self.view, self.handle
        answer = view.stoppable if message_id is None else view.answer(message_id)
        if answer is None or answer.message_id is None or handle is None:
            return
        if not view.stop_requested(answer.key):
            return  # it ended, or a Stop of it is on its way
        self._redraw()
        try:
            # Always by id: a Stop that arrives late must not stop the next answer.
            result = await handle.stop(answer.message_id)
        except HTTPStatusError as exc:
            view.stop_failed(answer.key, str(exc))
        except _UNREACHABLE as exc:
            view.stop_failed(answer.key, f"{type(exc).__name__}: {exc}")
        else:
            view.stop_answered(answer.key, str(result.get("reason")))
        self._redraw()

    async def _after_expiry(self) -> None:
        """The server no longer held our connection (it expired, or the server restarted):
        drive the session again unless another client took over (rules.after_expiry)."""
        client = self.client
        if client is None:
            return
        try:
            described = await client.get_session(self.session_id)
        except (HTTPStatusError, *_UNREACHABLE) as exc:
            log.warning("chatbridge widget: could not read the session's driver: %s", exc)
            return
        own_id = f"{client.stream.connection_id or self.cid}:{self.session_id}"
        action = after_expiry(self._driving, described.get("driver"), own_id)
        if action == "attach":
            await self.attach()
        elif action == "taken_over":
            self._driving = False
            self.view.detached("taken_over")
            self._redraw()

    # -- state ------------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """Something is in flight: setting up, connecting, an answer, a delayed delivery."""
        return (
            self.setting_up
            or self.view.status in _WAITING_STATUSES
            or self.view.thinking
            or any(e.delivery is Delivery.RETRYING for e in self.view.unfinished)
        )

    async def close(self) -> None:
        """Close the client; its callbacks are ignored from now on."""
        client, self.client = self.client, None
        if client is not None:
            await client.close()
        self.view.status_changed(StatusChange(ConnectionStatus.CLOSED))
