"""A session followed over its WebSocket, giving up at once when the session is gone.

A script gets HTTP 404 before the upgrade and a browser-style client gets close
code 4404; both are permanent, so `SessionSocket` reports `session_unknown`
without spending a single retry. Transient closes reconnect with `afterSeq`
under the contract's backoff policy; the budget starts over only after the socket
stayed open for the stability time or delivered an event, so a server that
accepts and drops at once ends in "offline".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from ..clock import LoopScheduler, Scheduler, sleep
from ..protocol import CloseCode, EventType
from ..protocol.status import ConnectionStatus, StatusChange
from .outbox import new_client_msg_id
from .policy import ReconnectPolicy
from .stream import StreamClosed, _noop
from .transport import HttpTransport

log = logging.getLogger(__name__)


class SessionUnknown(StreamClosed):
    """The session does not exist (any more)."""


class SessionSocket:
    """Live events of one session over `chatbridge/api/sessions/{id}/ws`, and acked sends."""

    def __init__(
        self,
        transport: HttpTransport,
        session_id: str,
        *,
        on_event: Callable[[dict[str, Any]], None] = _noop,
        on_status: Callable[[StatusChange], None] = _noop,
        after_seq: int | None = None,
        origin: str | None = None,
        scheduler: Scheduler | None = None,
        policy: ReconnectPolicy | None = None,
    ) -> None:
        self.transport = transport
        self.session_id = session_id
        self.last_seq = after_seq if after_seq is not None else -1
        self.status = ConnectionStatus.IDLE
        self.session_unknown = False
        self.last_close: tuple[int | None, str | None] = (None, None)
        self.attempts_made = 0
        self._origin = origin
        self._on_event = on_event
        self._on_status = on_status
        self._scheduler = scheduler or LoopScheduler()
        self._policy = policy or ReconnectPolicy()
        self._ws: WebSocketClientConnection | None = None
        self._acks: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._done = asyncio.Event()
        self._connected = asyncio.Event()

    def start(self) -> None:
        """Connect in the background (idempotent)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="chatbridge-ws")

    async def wait_closed(self) -> None:
        """Wait until the socket gave up, failed, or was closed."""
        self.start()
        await self._done.wait()

    async def send(self, text: str, client_msg_id: str | None = None) -> dict[str, Any]:
        """Send a message on the socket and wait for its `ack` (or raise on `nack`)."""
        self.start()
        await self._connected.wait()
        if self._ws is None:
            if self.session_unknown:
                raise SessionUnknown(f"session {self.session_id!r} does not exist")
            raise StreamClosed("the session socket is not connected")
        client_msg_id = client_msg_id or new_client_msg_id()
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._acks[client_msg_id] = future
        frame = {"type": "send", "clientMsgId": client_msg_id, "text": text}
        await self._ws.write_message(json.dumps(frame))
        answer = await future
        if answer.get("type") == "nack":
            raise ValueError(f"{answer.get('code')}: {answer.get('error')}")
        return answer

    async def close(self) -> None:
        """Close the socket and stop reconnecting."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._ws is not None:
            self._ws.close()
            self._ws = None
        self._finish(StatusChange(ConnectionStatus.CLOSED))

    async def _run(self) -> None:
        while True:
            failure = await self._connect_once()
            step = self._policy.after_close(self._scheduler.now(), failure)
            if step.decision == "failed":
                self.session_unknown = failure == CloseCode.SESSION_UNKNOWN or (
                    getattr(failure, "code", None) == 404
                )
                error = "session unknown" if self.session_unknown else str(failure)
                self._finish(StatusChange(ConnectionStatus.FAILED, error=error))
                return
            if step.decision == "offline" or step.delay is None:
                self._finish(StatusChange(ConnectionStatus.OFFLINE, error=str(failure)))
                return
            delay = step.delay
            self._set_status(
                StatusChange(
                    ConnectionStatus.RECONNECTING,
                    attempt=step.attempt,
                    max_attempts=self._policy.max_attempts,
                    retry_in=delay,
                    error=str(failure),
                )
            )
            await sleep(self._scheduler, delay)

    async def _connect_once(self) -> BaseException | int:
        query = {"afterSeq": self.last_seq} if self.last_seq >= 0 else None
        url = self.transport.url(f"chatbridge/api/sessions/{self.session_id}/ws", query)
        url = "ws" + url[len("http") :]
        headers = dict(self.transport.auth_headers())
        if self._origin:
            headers["Origin"] = self._origin
        self.attempts_made += 1
        self._set_status(StatusChange(ConnectionStatus.CONNECTING))
        try:
            self._ws = await websocket_connect(
                HTTPRequest(
                    url,
                    headers=headers,
                    connect_timeout=self.transport.connect_timeout,
                    request_timeout=self.transport.request_timeout,
                    ssl_options=self.transport.ssl_context,
                )
            )
        except HTTPClientError as exc:
            return exc
        except (OSError, asyncio.TimeoutError) as exc:
            return exc
        self._set_status(StatusChange(ConnectionStatus.CONNECTED))
        self._connected.set()
        self._policy.opened(self._scheduler.now())
        try:
            while (message := await self._ws.read_message()) is not None:
                self._on_message(message)
        finally:
            self._connected.clear()
            self.last_close = (self._ws.close_code, self._ws.close_reason)
            self._ws.close()
            self._ws = None
            for future in self._acks.values():
                if not future.done():
                    future.set_exception(StreamClosed("socket closed before the ack"))
            self._acks.clear()
        return self.last_close[0] if self.last_close[0] is not None else CloseCode.ABNORMAL

    def _on_message(self, message: str | bytes) -> None:
        frame = json.loads(message)
        kind = frame.get("type")
        if kind in ("ack", "nack"):
            future = self._acks.pop(frame.get("clientMsgId") or "", None)
            if future is not None and not future.done():
                future.set_result(frame)
            return
        seq = frame.get("seq")
        if isinstance(seq, int) and seq > self.last_seq:
            self.last_seq = seq
            self._policy.live_event()
            self._on_event(frame)
            if kind == EventType.SESSION_ENDED:
                log.info("chatbridge: session %s ended", self.session_id)

    def _finish(self, change: StatusChange) -> None:
        self._set_status(change)
        self._done.set()
        self._connected.set()  # wake senders; they find no socket

    def _set_status(self, change: StatusChange) -> None:
        self.status = change.status
        try:
            self._on_status(change)
        except Exception:
            log.exception("chatbridge: status listener failed")
