"""The SSE event stream, `GET chatbridge/api/events`, and its write batching and heartbeat."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web

from ...clock import TimerHandle
from ...protocol import SSE_PING, SSE_PING_EVENT, normalize_cid, sse_id_line
from ...protocol.rules import IDLE_TIMEOUT_MS
from ..bridge import ChatBridge
from .base import WRITE_AHEAD_BYTES, ChatBridgeHandler, bad_request

# The keep-alive a stream asks for (`?heartbeat=`): a comment by default, an event for
# a browser's EventSource.
HEARTBEATS = {"comment": SSE_PING, "event": SSE_PING_EVENT}


class FlushBatcher:
    """Flushes every stream written to during one loop iteration, once, in one callback.

    A burst of events to N watchers then costs N buffered writes and N socket
    flushes, with no task, queue or callback per watcher.
    """

    def __init__(self) -> None:
        self._dirty: set[EventStreamHandler] = set()
        self._scheduled = False

    def mark(self, stream: EventStreamHandler) -> None:
        self._dirty.add(stream)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        dirty, self._dirty = self._dirty, set()
        for stream in dirty:
            stream.flush_now()


def heartbeat_warning(interval: float) -> str | None:
    """Why this heartbeat interval makes clients reconnect idle streams, if it does.

    Every client takes a stream that sent nothing for `heartbeat.idleTimeoutMs` as dead
    (client_rules.json), so pings must come more often than that.
    """
    idle = IDLE_TIMEOUT_MS / 1000
    if 0 < interval < idle:
        return None
    now = "are off" if interval <= 0 else f"come every {interval:g} s"
    return (
        f"chatbridge: heartbeat_interval pings {now}, but clients take a stream silent for "
        f"{idle:g} s as dead: idle streams will be dropped and reopened every {idle:g} s. "
        f"Set c.ChatBridgeApp.heartbeat_interval below {idle:g} (default 15)."
    )


class Heartbeat:
    """One timer for all streams: a keep-alive frame every `interval` seconds.

    It runs on the bridge's scheduler, so tests see pings by advancing a fake clock.
    """

    def __init__(self, bridge: ChatBridge, interval: float) -> None:
        self._bridge = bridge
        self._interval = interval
        self._timer: TimerHandle | None = None

    def ensure_started(self) -> None:
        if self._timer is None and self._interval > 0:
            self._timer = self._bridge.scheduler.call_later(self._interval, self._beat)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _beat(self) -> None:
        self._bridge.ping_streams()
        self._timer = self._bridge.scheduler.call_later(self._interval, self._beat)


def _swallow_closed(future: asyncio.Future[Any]) -> None:
    # A write to a stream the client just left fails; the close handler cleans up.
    if not future.cancelled():
        future.exception()


def _event_id(raw: str | None, name: str) -> int | None:
    """A Last-Event-ID value: None when absent or empty, else a non-negative integer."""
    if raw is None or raw == "":
        return None
    raw = raw.strip()
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise bad_request(f"{name} must be a non-negative integer")
    return int(raw)


class EventStreamHandler(ChatBridgeHandler):
    """One connection's live event stream (Server-Sent Events)."""

    _track_activity = False  # an open stream is not user activity (server culling)

    def initialize(self) -> None:
        self._connection_id: str | None = None
        # Resolved when the stream ends (a Future: lighter than an Event per idle stream).
        self._ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._live = True
        # Looked up once: `send` runs for every delivery to this stream.
        self._batcher: FlushBatcher = self.settings["chatbridge_flusher"]
        # Bytes handed to tornado but not yet on the wire (unflushed, or flushing).
        self._unflushed_bytes = 0
        self._queued_bytes = 0
        self._flush_sizes: list[int] = []  # one or two in flight: a list is lighter
        # Frames waiting while WRITE_AHEAD_BYTES are on their way: a reader that
        # stopped reading makes this grow, and past the limit it is dropped (it can
        # resume). The welcome and its Last-Event-ID replay are exempt from the limit.
        self._backlog: deque[tuple[int | None, bytes]] | None = None
        self._backlog_bytes = 0
        self._exempt_frames = 0
        self._exempt_bytes = 0
        self._opening = True
        self._limit = 0
        self._ping = SSE_PING

    @web.authenticated
    @authorized
    async def get(self) -> None:
        cid = None
        raw_cid = self.get_query_argument("cid", None)
        if raw_cid is not None:
            cid = normalize_cid(raw_cid)
            if cid is None:
                # Log it: a client with a broken cid generator would otherwise
                # silently lose its identity on every reconnect.
                self.log.warning("chatbridge: rejected malformed cid %r", raw_cid[:80])
                raise bad_request("cid must be 'cid-' followed by a canonical UUID")
        last_event_id = self._last_event_id()
        self._ping = self._heartbeat()
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        # Proxies (nginx) must not buffer a stream.
        self.set_header("X-Accel-Buffering", "no")
        bridge = self.bridge
        self._limit = bridge.limits.max_stream_buffer_bytes
        welcome = bridge.open_stream(cid, self.owner, last_event_id, self)
        self._connection_id = welcome["connectionId"]
        self._opening = False
        self._refill()  # history this connection was still owed before it reconnected
        self.settings["chatbridge_heartbeat"].ensure_started()
        await self._ended

    def _heartbeat(self) -> bytes:
        # A browser's EventSource hides comments: it asks for the ping as an event.
        heartbeat = self.get_query_argument("heartbeat", "comment")
        if heartbeat not in HEARTBEATS:
            raise bad_request("heartbeat must be 'comment' or 'event'")
        return HEARTBEATS[heartbeat]

    def _last_event_id(self) -> int | None:
        # Both forms are checked when both are given (a malformed one is a 400); the header wins.
        header = _event_id(self.request.headers.get("Last-Event-ID"), "Last-Event-ID")
        query = _event_id(self.get_query_argument("lastEventId", None), "lastEventId")
        return header if header is not None else query

    # -- FrameSink -------------------------------------------------------------------

    def send(self, frame_id: int | None, payload: bytes) -> None:
        if not self._live:
            return
        if self._backlog or self._queued_bytes + self._unflushed_bytes >= WRITE_AHEAD_BYTES:
            self._wait(frame_id, payload)
        else:
            self._write_frame(frame_id, payload)

    def ping(self) -> None:
        self.send(None, self._ping)

    def kick(self) -> None:
        self._refill()

    def _write_frame(self, frame_id: int | None, payload: bytes) -> None:
        chunk = payload if frame_id is None else sse_id_line(frame_id) + payload
        self.write(chunk)
        self._unflushed_bytes += len(chunk)
        self._batcher.mark(self)

    def _wait(self, frame_id: int | None, payload: bytes) -> None:
        if self._backlog is None:
            self._backlog = deque()
        self._backlog.append((frame_id, payload))
        self._backlog_bytes += len(payload)
        if self._opening:
            self._exempt_frames += 1
            self._exempt_bytes += len(payload)
            return
        unsent = self._queued_bytes + self._unflushed_bytes + self._backlog_bytes
        if unsent - self._exempt_bytes > self._limit:
            self._drop_slow_consumer(unsent)

    def _refill(self) -> None:
        """Write what waits, then history the connection is owed, while little is in flight."""
        if not self._live or self._opening:
            return
        backlog = self._backlog
        while backlog and self._queued_bytes + self._unflushed_bytes < WRITE_AHEAD_BYTES:
            frame_id, payload = backlog.popleft()
            self._backlog_bytes -= len(payload)
            if self._exempt_frames:
                self._exempt_frames -= 1
                self._exempt_bytes -= len(payload)
            self._write_frame(frame_id, payload)
        room = WRITE_AHEAD_BYTES - self._queued_bytes - self._unflushed_bytes
        if not backlog and room > 0 and self._connection_id is not None:
            # Pulled only while the client keeps reading: any history size replays
            # without a burst, and a stalled reader is never sent more than this.
            self.bridge.drain(self._connection_id, room)

    def _drop_slow_consumer(self, unsent: int) -> None:
        self.bridge.metrics.record_slow_consumer_drop()
        self.log.warning(
            "chatbridge: dropping the stream of %s: %d bytes unsent (limit %d); "
            "it can resume with Last-Event-ID",
            self._connection_id,
            unsent,
            self._limit,
        )
        self._end()
        self._release()
        # The socket is stuck, so nothing more can be said on it: close it outright.
        self.request.connection.stream.close()  # type: ignore[union-attr]

    def close(self) -> None:
        if not self._live:
            return
        self._end()
        if not self._finished:
            self.finish(set_content_type="text/event-stream")

    # -- tornado hooks ----------------------------------------------------------------

    def flush_now(self) -> None:
        connection: Any = self.request.connection
        if not self._live or connection.stream.closed():
            return
        size, self._unflushed_bytes = self._unflushed_bytes, 0
        self._queued_bytes += size
        self._flush_sizes.append(size)
        self.flush().add_done_callback(self._flushed)

    def _flushed(self, future: asyncio.Future[Any]) -> None:
        # Flushes complete in order, so the oldest size is this one's.
        self._queued_bytes -= self._flush_sizes.pop(0)
        _swallow_closed(future)
        self._refill()

    def _end(self) -> None:
        self._live = False
        self._backlog = None
        if not self._ended.done():
            self._ended.set_result(None)

    def finish(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("set_content_type", self._headers.get("Content-Type", "application/json"))
        return super().finish(*args, **kwargs)

    def on_connection_close(self) -> None:
        self._end()
        self._release()

    def on_finish(self) -> None:
        self._end()
        self._release()

    def _release(self) -> None:
        if self._connection_id is not None:
            self.bridge.close_stream(self._connection_id, self)
