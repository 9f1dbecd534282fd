"""Fan-out: a session event logged once, serialised once, delivered to every receiver.

Receivers are the event streams of the connections that watch the session
(each frame gets the connection's next frame id and a replay slot, even while
the connection has no stream) and the WebSockets bound to the session. The
bridge never touches a socket: streams and session sockets are handed in as the
small objects below, which the fan-out writes bytes or text to.

A seq is a promise: an event is shown to anyone (a receiver, the history, a
watch's replay, `lastSeq`) only once the store has committed it, so a crash can
never make a seq that a client saw mean something else. With a store that
commits as it is written (memory) events are shown at once; otherwise they wait
for the next group commit: every event published during one loop iteration (and
the next, so that an answer's `message_start` joins its user message), and while
the previous commit ran, goes in one `flush`. A batch someone waits for (anything
but a run of an answer's text) is an urgent flush: committed at once, on the loop,
if it is small (sqlite_commit.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

from ..clock import Scheduler, sleep
from ..protocol import EventType, dumps, sse_payload
from .metrics import NO_METRICS, BridgeMetrics
from .state import (
    Connection,
    ConnectionRegistry,
    LoggedEvent,
    Session,
    SessionRegistry,
    StreamRegistry,
)
from .store import SessionStore

# History is read from a session's log this many events at a time while it is drained.
DRAIN_EVENTS = 256

# Seconds between attempts to commit shown-to-be events while the store refuses.
COMMIT_RETRY_DELAY = 1.0

# An event to show once it is durable, or an action to run once everything
# published before it was shown.
_Unshown = tuple[Session, LoggedEvent] | Callable[[], None]


def _urgent(batch: list[_Unshown]) -> bool:
    """Whether someone waits for this batch: anything but a run of an answer's text
    (a user message, an answer's start or end, a runner waiting for its first text)."""
    return any(callable(item) or item[1].type != EventType.BLOCK_DELTA for item in batch)


class FrameSink(Protocol):
    """A live event stream (the SSE response) as the bridge sees it."""

    def send(self, frame_id: int | None, payload: bytes) -> None:
        """Queue one frame; `frame_id` None for frames without an id (welcome, ping)."""

    def ping(self) -> None:
        """Write the keep-alive frame (nothing else was written for a while)."""

    def kick(self) -> None:
        """History is waiting for this stream: pull it (`ChatBridge.drain`) as it drains."""

    def close(self) -> None:
        """End the stream (it was replaced by a newer one, or the server stops)."""


class SessionSocket(Protocol):
    """A WebSocket bound to one session."""

    def send_event(self, event: LoggedEvent) -> None:
        """Send one live session event as a text frame."""

    def catch_up(self, session: Session, after_seq: int) -> None:
        """Send the session's shown events after `after_seq`, paced by the client's
        reading, before any live one."""

    def end(self, code: int, reason: str) -> None:
        """Close the socket with an application close code."""


class Fanout:
    """Publishes session events to watchers' streams and session sockets."""

    metrics: BridgeMetrics = NO_METRICS

    def __init__(
        self,
        connections: ConnectionRegistry,
        streams: StreamRegistry[FrameSink],
        sessions: SessionRegistry,
        store: SessionStore,
        scheduler: Scheduler,
        log: logging.Logger | logging.LoggerAdapter[Any],
    ) -> None:
        self._connections = connections
        self._streams = streams
        self._sessions = sessions
        self.store = store
        self._scheduler = scheduler
        self._log = log
        self.sockets: dict[str, set[SessionSocket]] = {}
        """The WebSockets bound to each session, by session id."""
        self._unshown: list[_Unshown] = []
        self._committing = False  # a batch is taken from `_unshown` and being committed
        self._pump: asyncio.Task[None] | None = None
        self._store_failing = False  # a commit failed and none has succeeded since
        # `wait_shown` callers, released early when the store fails or closes.
        self._shown_waiters: set[Callable[[], None]] = set()
        self.relay: Any = None
        """With a Redis store, the `RedisRelay`: Redis assigns seqs, and events are
        shown when the relay reads them back (relay.py)."""

    def publish(self, session: Session, event_type: str, fields: dict[str, Any]) -> LoggedEvent:
        """Log a session event (the log feeds the store); show it once it is durable."""
        if self.relay is not None:
            return self.relay.publish(session, event_type, fields)  # type: ignore[no-any-return]
        event = session.log.append(event_type, fields)
        if self.store.commits_immediately and not self._unshown and not self._committing:
            self._show(session, event)
        else:
            self._unshown.append((session, event))
            self._start_pump()
        return event

    def after_shown(self, action: Callable[[], None]) -> None:
        """Run `action` once every event published so far has been shown."""
        if not self._unshown and not self._committing:
            action()
        else:
            self._unshown.append(action)

    async def wait_shown(self) -> None:
        """Return once every event published so far has been shown (at once if it has),
        or as soon as the store fails to commit: then waiting would gain nothing."""
        if self._store_failing:
            return
        shown: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def resolve() -> None:
            if not shown.done():  # cancelled if the waiter was (a Stop)
                shown.set_result(None)

        self.after_shown(resolve)
        if shown.done():
            return
        self._shown_waiters.add(resolve)
        try:
            await shown
        finally:
            self._shown_waiters.discard(resolve)

    def show_restored(self) -> None:
        """Commit and show what a restore published (a cut answer's closing events)
        before the server answers anyone, so no reader sees the answer still open."""
        commit_now = getattr(self.store, "commit_now", None)  # stores with a writer thread
        if not self._unshown or commit_now is None:
            return
        try:
            commit_now()
        except Exception as exc:  # shown later by the pump, once the store commits
            self._log.error("chatbridge: could not commit the restore's events yet: %s", exc)
            return
        batch, self._unshown = self._unshown, []
        for item in batch:
            if callable(item):
                item()
            else:
                self._show(*item)

    def start(self) -> None:
        """Show what was published before an event loop ran (a restore's closing events)."""
        if self._unshown:
            self._start_pump()

    async def stop(self) -> None:
        """Stop showing events (the server stops; the store commits what it holds)."""
        if self._pump is not None:
            self._pump.cancel()
            await asyncio.gather(self._pump, return_exceptions=True)

    def _start_pump(self) -> None:
        if self._pump is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # restoring before the server runs: `start` picks these up
        self._pump = loop.create_task(self._show_when_durable())

    async def _show_when_durable(self) -> None:
        try:
            while self._unshown:
                # One more loop pass first: a user message's answer publishes its
                # `message_start` from another task, and it joins this commit.
                await asyncio.sleep(0)
                batch, self._unshown = self._unshown, []
                self._committing = True
                if not await self._commit(_urgent(batch)):
                    return
                self._committing = False
                for item in batch:
                    if callable(item):
                        item()
                    else:
                        self._show(*item)
        finally:
            self._committing = False
            self._pump = None

    async def _commit(self, urgent: bool) -> bool:
        """Wait until everything published so far is durable; False if it never will be."""
        while True:
            if self.store.closed:
                # The server stops: the store committed what it could as it closed,
                # and nobody is left to show anything to.
                self._unshown.clear()
                self._release_shown_waiters()
                return False
            try:
                await self.store.flush(urgent)
            except Exception as exc:
                if not self._store_failing:  # once per outage, not once per attempt
                    self._log.error("chatbridge: events wait for the store to commit: %s", exc)
                self._store_failing = True
                self._release_shown_waiters()
                await sleep(self._scheduler, COMMIT_RETRY_DELAY)
                continue
            if self._store_failing:
                self._store_failing = False
                self._log.warning("chatbridge: the store commits again; showing waiting events")
            return True

    def _release_shown_waiters(self) -> None:
        for resolve in list(self._shown_waiters):
            resolve()

    def show(self, session: Session, event: LoggedEvent) -> None:
        """Show an event that is durable already (the relay read it back from Redis)."""
        self._show(session, event)

    def _show(self, session: Session, event: LoggedEvent) -> None:
        session.log.shown_seq = event.seq
        if session.watchers:
            payload = event.payload
            get = self._connections.get
            for connection_id in session.watchers:
                connection = get(connection_id)
                # A connection still being sent this session's history gets this
                # event from the log when its cursor gets there.
                if connection is not None and not (
                    connection.catchup and session.id in connection.catchup
                ):
                    self.deliver(connection, payload)
        # A session's end reaches its sockets from `end_sockets`: by the time it is
        # shown, the id may name a new session with sockets of its own.
        sockets = self.sockets.get(session.id) if event.type != EventType.SESSION_ENDED else None
        if sockets:
            for socket in sockets:
                socket.send_event(event)
        self.metrics.record_shown()

    def catch_up(self, connection: Connection, session: Session, after_seq: int) -> None:
        """Send `connection` the session's shown events after `after_seq`, then live ones.

        Nothing is copied or written here: the events are pulled from the log in
        pieces as the client reads them (`drain`), so any history size replays
        without a burst, and N connections replaying one session hold no copies.
        """
        if after_seq >= session.log.shown_seq:
            self.stop_catch_up(connection, session.id)
            return
        if connection.catchup is None:
            connection.catchup = {}
        connection.catchup[session.id] = after_seq
        stream = self._streams.get(connection.id)
        if stream is not None:
            stream.kick()

    def stop_catch_up(self, connection: Connection, session_id: str) -> None:
        """Forget a history still being sent (the connection stopped watching)."""
        if connection.catchup:
            connection.catchup.pop(session_id, None)
            if not connection.catchup:
                connection.catchup = None

    def drain(self, connection: Connection, budget: int) -> bool:
        """Deliver up to about `budget` bytes of history owed to `connection`.

        Returns True while more is owed. A session it caught up with is live again.
        """
        catchup = connection.catchup
        if not catchup:
            return False
        for session_id in list(catchup):
            session = self._sessions.get(session_id)
            if session is None or connection.id not in session.watchers:
                del catchup[session_id]
                continue
            after = catchup[session_id]
            while budget > 0:
                events = session.log.shown_after(after, DRAIN_EVENTS)
                if not events:
                    break
                for event in events:
                    payload = event.payload
                    self.deliver(connection, payload)
                    after = event.seq
                    budget -= len(payload)
                    if budget <= 0:
                        break
            if after >= session.log.shown_seq:
                del catchup[session_id]
            else:
                catchup[session_id] = after
            if budget <= 0:
                break
        if not catchup:
            connection.catchup = None
            return False
        return True

    def deliver(self, connection: Connection, payload: bytes) -> None:
        """One frame to one connection: an id and a replay slot, then its stream if open."""
        # Frames get an id and a replay slot even while the connection has no
        # stream, so a reconnect within the TTL replays them.
        frame_id = connection.next_frame_id()
        connection.replay.append(frame_id, payload)
        stream = self._streams.get(connection.id)
        if stream is not None:
            stream.send(frame_id, payload)

    def notify_detached(self, connection_id: str, session_id: str, reason: str) -> None:
        """Tell a connection it no longer drives a session (`detached` frame)."""
        connection = self._connections.get(connection_id)
        if connection is not None:
            data = dumps({"sessionId": session_id, "reason": reason})
            self.deliver(connection, sse_payload(EventType.DETACHED, data))

    # -- session sockets ------------------------------------------------------------------

    def add_socket(self, session: Session, socket: SessionSocket, after_seq: int | None) -> None:
        """Bind a WebSocket to a session: replay after `after_seq`, then live events."""
        self.sockets.setdefault(session.id, set()).add(socket)
        if after_seq is not None:
            socket.catch_up(session, after_seq)

    def remove_socket(self, session_id: str, socket: SessionSocket) -> None:
        """Forget a closed WebSocket."""
        sockets = self.sockets.get(session_id)
        if sockets is not None:
            sockets.discard(socket)
            if not sockets:
                del self.sockets[session_id]

    def end_sockets(
        self, session_id: str, code: int, reason: str, last_event: LoggedEvent | None = None
    ) -> None:
        """Close every WebSocket of a session with an application close code.

        `last_event` (the session's end) is sent to each first, once it is shown.
        """
        sockets = self.sockets.pop(session_id, set())

        def end() -> None:
            for socket in sockets:
                if last_event is not None:
                    socket.send_event(last_event)
                socket.end(code, reason)

        self.after_shown(end)

    def end_all(self, code: int, reason: str) -> None:
        """Close every stream and every session socket at once (the server stops)."""
        for stream in self._streams:
            stream.close()
        for sockets in self.sockets.values():
            for socket in sockets:
                socket.end(code, reason)
        self.sockets.clear()
