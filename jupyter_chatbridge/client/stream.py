"""The client's event stream: one cid for life, resume, re-watch, exactly-once delivery.

`EventStream` keeps a `GET chatbridge/api/events?cid=…` open. When it breaks it
reconnects with the same cid and `Last-Event-ID`, under the contract's policy
(6 attempts, backoff with jitter; the budget starts over only once a connection
stayed up for the stability time or delivered an event), and gives up at once on
a permanent failure. When the welcome says the server lost frames (`gap`), lost
the connection (`resumed: false`) or restarted (a new `epoch`), it re-watches
every session with `afterSeq` = the last seq it delivered. Session events are
delivered to the caller exactly once per session, in seq order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from ..clock import LoopScheduler, Scheduler, TimerHandle, sleep
from ..protocol import EventType, new_cid, normalize_cid
from ..protocol.rules import server_unavailable
from ..protocol.status import ConnectionStatus, StatusChange
from .policy import IDLE_TIMEOUT, ReconnectPolicy
from .sse import SSEParser
from .transport import HTTPStatusError, HttpTransport, TransportError

log = logging.getLogger(__name__)

EVENTS_PATH = "chatbridge/api/events"
# Three missed heartbeats (15 s apart by default) and the stream is presumed dead.
DEFAULT_IDLE_TIMEOUT = IDLE_TIMEOUT

__all__ = ["ConnectionStatus", "EventStream", "StatusChange", "StreamClosed"]


class StreamClosed(RuntimeError):
    """The stream was closed, failed permanently or gave up; it will not connect again."""


def _noop(*_: Any) -> None:
    """The default for every optional callback of the client."""
    return None


class EventStream:
    """A resumable event stream for one client identity."""

    def __init__(
        self,
        transport: HttpTransport,
        *,
        on_event: Callable[[dict[str, Any]], None],
        on_status: Callable[[StatusChange], None] = _noop,
        on_frame: Callable[[str, dict[str, Any]], None] = _noop,
        on_session_lost: Callable[[str, str], None] = _noop,
        cid: str | None = None,
        scheduler: Scheduler | None = None,
        policy: ReconnectPolicy | None = None,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    ) -> None:
        stable_id = normalize_cid(cid) if cid is not None else new_cid()
        if stable_id is None:
            raise ValueError(f"not a valid cid: {cid!r}")
        self.transport = transport
        # Made once, kept for every reconnect: this is what lets the server keep our state.
        self.cid: str = stable_id
        self.connection_id: str | None = None
        self.epoch: str | None = None
        self.status = ConnectionStatus.IDLE
        self.last_error: str | None = None
        self._on_event = on_event
        self._on_status = on_status
        self._on_frame = on_frame
        self._on_session_lost = on_session_lost
        self._scheduler = scheduler or LoopScheduler()
        self._policy = policy or ReconnectPolicy()
        self._idle_timeout = idle_timeout
        self._parser = SSEParser()
        # session id -> last seq delivered to the caller (-1: nothing yet, accept any).
        self._watched: dict[str, int] = {}
        # Sessions the server may not be delivering to this connection yet.
        self._unconfirmed: set[str] = set()
        # Sessions being re-synced after lost state: only the next seq is accepted, so
        # frames replayed from the buffer cannot skip past what the re-watch will resend.
        self._resyncing: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._rewatch_task: asyncio.Task[None] | None = None
        self._current: Any = None
        self._changed = asyncio.Event()
        self._last_data = 0.0
        self._watchdog: TimerHandle | None = None
        self._closed = False

    # -- public API ------------------------------------------------------------------

    @property
    def watched(self) -> dict[str, int]:
        """Watched session ids and the last seq delivered for each."""
        return dict(self._watched)

    def start(self) -> None:
        """Start connecting in the background (idempotent)."""
        if self._closed:
            raise StreamClosed("this event stream was closed")
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="chatbridge-sse")

    def restart(self) -> None:
        """The user's Reconnect: a fresh attempt budget, the same cid and resume point.

        Starts the stream again if it gave up, failed, or was closed.
        """
        self._closed = False
        self._policy.reset()
        if self._task is not None and self._task.done():
            self._task = None
        if self._task is None:
            # At once, so a `wait_connected` right after this waits instead of failing.
            self._set_status(StatusChange(ConnectionStatus.CONNECTING))
        self.start()

    async def wait_connected(self) -> None:
        """Wait until connected; raises `StreamClosed` if the stream failed or gave up."""
        self.start()
        while self.status is not ConnectionStatus.CONNECTED:
            if self.status in (
                ConnectionStatus.FAILED,
                ConnectionStatus.OFFLINE,
                ConnectionStatus.CLOSED,
            ):
                raise StreamClosed(f"event stream is {self.status.value}: {self.last_error}")
            self._changed.clear()
            await self._changed.wait()

    async def watch(self, session_id: str, after_seq: int | None = None) -> int:
        """Receive a session's events: those after `after_seq` first (all new ones if None).

        Returns the session's last seq at the time of the call. Raises
        `HTTPStatusError` (404 `session_unknown`) for a session that does not exist.
        """
        if session_id not in self._watched or after_seq is not None:
            self._watched[session_id] = -1 if after_seq is None else after_seq
        self._unconfirmed.add(session_id)
        await self.wait_connected()
        try:
            return await self._post_watch(session_id)
        except HTTPStatusError:
            self._forget(session_id)
            raise

    async def unwatch(self, session_id: str) -> None:
        """Stop receiving a session's events."""
        self._forget(session_id)
        if self.status is ConnectionStatus.CONNECTED:
            await self._connection_call("unwatch", {"sessionId": session_id})

    async def call(self, action: str, session_id: str) -> Any:
        """A connection-scoped call (`attach`, `detach`, `suspend`) as this connection."""
        await self.wait_connected()
        return await self._connection_call(action, {"sessionId": session_id})

    def reconnect_now(self) -> None:
        """Drop the current stream and reconnect (e.g. after the network came back)."""
        if self._current is not None:
            self._current.abort()

    async def close(self) -> None:
        """Stop for good: cut the stream and cancel every timer and task (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._disarm_watchdog()
        for task in (self._task, self._rewatch_task):
            if task is not None and not task.done():
                task.cancel()
        for task in (self._task, self._rewatch_task):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._current is not None:
            self._current.abort()
        self._set_status(StatusChange(ConnectionStatus.CLOSED))

    # -- the connect loop ------------------------------------------------------------------

    async def _run(self) -> None:
        first = True
        while not self._closed:
            if first and self.status is not ConnectionStatus.CONNECTING:
                self._set_status(StatusChange(ConnectionStatus.CONNECTING))
            failure = await self._connect_once()
            first = False
            if self._closed:
                return
            self.last_error = _describe(failure)
            unavailable = (
                server_unavailable(failure.status, failure.body)
                if isinstance(failure, HTTPStatusError)
                else None
            )
            step = self._policy.after_close(self._scheduler.now(), failure)
            if step.decision == "failed":
                log.warning("chatbridge: event stream failed: %s", self.last_error)
                self._set_status(
                    StatusChange(
                        ConnectionStatus.FAILED, error=self.last_error, unavailable=unavailable
                    )
                )
                return
            if step.decision == "offline" or step.delay is None:
                self._set_status(
                    StatusChange(
                        ConnectionStatus.OFFLINE, error=self.last_error, unavailable=unavailable
                    )
                )
                return
            delay = step.delay
            self._set_status(
                StatusChange(
                    ConnectionStatus.RECONNECTING,
                    attempt=step.attempt,
                    max_attempts=self._policy.max_attempts,
                    retry_in=delay,
                    error=self.last_error,
                    unavailable=unavailable,
                )
            )
            await sleep(self._scheduler, delay)

    async def _connect_once(self) -> BaseException:
        headers: dict[str, str] = {}
        if self._parser.last_event_id:
            headers["Last-Event-ID"] = self._parser.last_event_id
        self._parser.reset()
        try:
            self._current = await self.transport.open_stream(
                EVENTS_PATH, {"cid": self.cid}, headers, self._on_data
            )
            self._last_data = self._scheduler.now()
            self._arm_watchdog(self._idle_timeout)
            await self._current.read()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return exc
        finally:
            self._disarm_watchdog()
            self._current = None
            if self._rewatch_task is not None:
                self._rewatch_task.cancel()
        return TransportError("event stream ended")  # pragma: no cover - read() always raises

    def _on_data(self, chunk: bytes) -> None:
        self._last_data = self._scheduler.now()
        for event in self._parser.feed(chunk):
            data = event.json()
            if not isinstance(data, dict):
                continue
            if event.event == EventType.WELCOME:
                self._on_welcome(data)
            elif "seq" in data:
                self._deliver(data)
            else:
                self._on_frame(event.event, data)

    def _on_welcome(self, welcome: dict[str, Any]) -> None:
        previous_epoch = self.epoch
        self.connection_id = welcome.get("connectionId")
        self.epoch = welcome.get("epoch")
        self._policy.opened(self._scheduler.now())
        lost_state = (
            not welcome.get("resumed")
            or bool(welcome.get("gap"))
            or (previous_epoch is not None and previous_epoch != self.epoch)
        )
        if lost_state:
            self._unconfirmed.update(self._watched)
            self._resyncing.update(self._watched)
        self._on_frame(EventType.WELCOME, welcome)
        self._set_status(StatusChange(ConnectionStatus.CONNECTED))
        if self._unconfirmed:
            self._rewatch_task = asyncio.get_running_loop().create_task(self._rewatch())

    def _deliver(self, event: dict[str, Any]) -> None:
        session_id = event.get("sessionId")
        seq = event.get("seq")
        if not isinstance(session_id, str) or not isinstance(seq, int):
            return
        last = self._watched.get(session_id)
        if last is None or seq <= last:
            return  # not ours, or already delivered (replay overlapping a re-watch)
        if session_id in self._resyncing and seq != last + 1:
            return  # past a hole: the re-watch resends it in order
        self._watched[session_id] = seq
        self._policy.live_event()
        self._on_event(event)
        if event.get("type") == EventType.SESSION_ENDED:
            self._forget(session_id)
            self._on_session_lost(session_id, "session_ended")

    async def _rewatch(self) -> None:
        for session_id in sorted(self._unconfirmed):
            if session_id not in self._watched:
                continue
            try:
                await self._post_watch(session_id)
            except HTTPStatusError as exc:
                if exc.status == 404 and exc.code == "session_unknown":
                    self._forget(session_id)
                    self._on_session_lost(session_id, "session_unknown")
                    continue
                log.warning("chatbridge: re-watch of %s failed: %s", session_id, exc)
                self.reconnect_now()  # try again on a fresh connection
                return
            except TransportError as exc:
                log.warning("chatbridge: re-watch of %s failed: %s", session_id, exc)
                self.reconnect_now()
                return

    async def _post_watch(self, session_id: str) -> int:
        last_seq = -1
        for _ in range(2):
            last = self._watched.get(session_id, -1)
            body: dict[str, Any] = {"sessionId": session_id}
            if last >= 0:
                body["afterSeq"] = last
            answer = await self._connection_call("watch", body)
            found = answer.get("lastSeq") if isinstance(answer, dict) else None
            last_seq = found if isinstance(found, int) else -1
            if last < 0 or last_seq >= last:
                break
            # The server's history ends before what we delivered: it lost its newest
            # events in a crash and will reuse their seqs. Follow it from its last seq
            # (watching again, so nothing it sends meanwhile is skipped) and say so.
            log.warning(
                "chatbridge: session %s rewound from seq %d to %d", session_id, last, last_seq
            )
            self._watched[session_id] = last_seq
            self._resyncing.add(session_id)
            self._on_frame(
                "rewound", {"sessionId": session_id, "lastSeq": last_seq, "delivered": last}
            )
        self._unconfirmed.discard(session_id)
        self._resyncing.discard(session_id)
        if self._watched.get(session_id) == -1:
            # Watching "from now": everything up to lastSeq came before us.
            self._watched[session_id] = last_seq
        return last_seq

    def _forget(self, session_id: str) -> None:
        self._watched.pop(session_id, None)
        self._unconfirmed.discard(session_id)
        self._resyncing.discard(session_id)

    async def _connection_call(self, action: str, body: dict[str, Any]) -> Any:
        headers = {"X-Connection-ID": self.connection_id or ""}
        response = await self.transport.request(
            "POST", f"chatbridge/api/{action}", body, headers=headers
        )
        if response.status >= 400:
            raise HTTPStatusError(response.status, response.error, response.body)
        return response.body

    # -- timers ------------------------------------------------------------------------

    def _arm_watchdog(self, delay: float) -> None:
        if self._idle_timeout > 0:
            self._watchdog = self._scheduler.call_later(delay, self._check_idle)

    def _disarm_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def _check_idle(self) -> None:
        # Re-armed lazily instead of on every chunk: cheap on a busy stream.
        silent_for = self._scheduler.now() - self._last_data
        if silent_for >= self._idle_timeout:
            log.info("chatbridge: no data for %.0fs; reconnecting", silent_for)
            self.reconnect_now()
        else:
            self._arm_watchdog(self._idle_timeout - silent_for)

    def _set_status(self, change: StatusChange) -> None:
        self.status = change.status
        self._changed.set()
        try:
            self._on_status(change)
        except Exception:
            log.exception("chatbridge: status listener failed")


def _describe(failure: BaseException) -> str:
    text = str(failure)
    return f"{type(failure).__name__}: {text}" if text else type(failure).__name__
