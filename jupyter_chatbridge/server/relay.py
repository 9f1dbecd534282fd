"""The relay: with a Redis store, every process's one path from Redis to its clients.

Many server processes share one Redis (`RedisStore`). No process can know a
session's next seq, so Redis assigns it (redis_scripts: `SEND`, `APPEND_NEXT`,
`END`), and no process shows an event it wrote itself: one task on the event
loop runs an `XREAD BLOCK` loop (redis-py's asyncio client) over the stream of
every session the process holds, from the last seq it has, logs what it reads
(`EventLog.ingest`) and shows it through the fan-out like any event. (On the
loop, not in a thread: a thread would hand each batch over and take the GIL from
the loop that fans it out.) So every client of every process sees each event
exactly once, in seq order, with no gap, and only once Redis holds it: a seq is
a promise across processes too.

The same loop reads the `notices` stream: sessions created on another process
and take-overs of a driver whose connection lives here.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

try:
    import redis
    import redis.asyncio
except ImportError:  # pragma: no cover - only a RedisStore, which needs the extra, has a relay
    redis = None  # type: ignore[assignment]

from ..protocol import CloseCode, DetachReason, ErrorCode, EventType, dumps
from .errors import BridgeError, session_unknown
from .fanout import Fanout
from .recovery import recover
from .state import LoggedEvent, PendingInput, Session, SessionRegistry
from .store.redis import RedisStore

# How long one XREAD waits for news before it looks at the set of streams again.
READ_BLOCK_MS = 100

# Seconds between two attempts to read while Redis does not answer.
READ_RETRY_DELAY = 0.5

# Seconds a send waits for its own event to come back before it answers anyway.
SHOWN_TIMEOUT = 5.0


def event_pieces(session_id: str, event_type: str, fields: dict[str, Any]) -> tuple[str, str]:
    """The event's one-line JSON around its seq: `head + str(seq) + tail` is what
    `EventLog.append` would have written (type, sessionId, seq, then the fields)."""
    head = dumps({"type": event_type, "sessionId": session_id})[:-1] + ',"seq":'
    tail = "," + dumps(fields)[1:] if fields else "}"
    return head, tail


class RedisRelay:
    """Reads every held session's stream from Redis and shows what it reads."""

    def __init__(
        self,
        store: RedisStore,
        sessions: SessionRegistry,
        fanout: Fanout,
        now: Callable[[], float],
        max_receipts: int,
        log: logging.Logger | logging.LoggerAdapter[Any],
    ) -> None:
        self.store = store
        self._max_receipts = max_receipts
        self.token = uuid.uuid4().hex[:16]
        """This process, as a writer of ordered appends (and in its lease tokens)."""
        self._sessions = sessions
        self._fanout = fanout
        self._now = now
        self._log = log
        self._counter = itertools.count(1)
        self._positions: dict[str, int] = {}  # the seq read so far, by session
        self._tracked: dict[str, Session] = {}
        self._ended: set[str] = set()  # deleted here, its `session_ended` not read back yet
        self._notices_from = "$"
        self._reader: asyncio.Task[None] | None = None
        self._changed: dict[str, asyncio.Event] = {}
        self.on_input: Callable[[Session], None] = lambda session: None
        """Called when a session has a message to answer (the leased runner's `ensure`)."""
        self.open_answers: set[str] = set()
        """Sessions whose last answer has no `message_end` yet (as read from Redis)."""

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start reading (needs the running loop)."""
        if self._reader is not None:
            return
        try:
            newest: Any = self.store.client.xrevrange(self.store.keys.notices, count=1)
            self._notices_from = str(newest[0][0]) if newest else "0-0"
        except redis.RedisError:
            self._notices_from = "0-0"
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def stop(self) -> None:
        """Stop reading; idempotent."""
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    def track(self, session: Session) -> None:
        """Read this session's stream from the seq its log has."""
        self._tracked[session.id] = session
        self._positions[session.id] = session.log.last_seq

    def holds(self, session: Session) -> bool:
        """True while this process reads the session (it was not deleted)."""
        return self._tracked.get(session.id) is session

    def _untrack(self, session_id: str) -> None:
        self._tracked.pop(session_id, None)
        self._changed.pop(session_id, None)
        self._positions.pop(session_id, None)

    # -- finding sessions other processes created -----------------------------------------

    def discover(self, session_id: str) -> Session:
        """A session this process does not hold yet, loaded from Redis, or a 404."""
        if session_id in self._ended:
            raise session_unknown(session_id)
        try:
            stored = self.store.load_one(session_id)
        except redis.RedisError as exc:
            raise self.unavailable(exc) from None
        if stored is None:
            raise session_unknown(session_id)
        return self._hold(stored.id, stored.settings, stored.events, stored.last_seq)

    def _hold(
        self, session_id: str, settings: dict[str, Any], events: list[LoggedEvent], last_seq: int
    ) -> Session:
        existing = self._sessions.get(session_id)
        if existing is not None:
            return existing
        session = self._sessions.restore(session_id, self._now(), settings, events, last_seq, [])
        self._rebuild_pending(session)
        self.track(session)
        return session

    def _rebuild_pending(self, session: Session) -> None:
        recovery = recover(session.log.retained)
        session.pending.clear()
        session.pending.extend(recovery.requeue)
        if recovery.cut_answer is not None:
            self.open_answers.add(session.id)

    def _on_created(self, session_id: str) -> None:
        if session_id in self._sessions or session_id in self._ended:
            return
        with contextlib.suppress(BridgeError):  # gone again, or Redis is away:
            self.discover(session_id)  # a request for it will look again

    # -- writing --------------------------------------------------------------------------

    def publish(self, session: Session, event_type: str, fields: dict[str, Any]) -> LoggedEvent:
        """Queue an event at the session's next seq; it is shown when read back.

        Returns a placeholder (seq 0): Redis assigns the seq.
        """
        head, tail = event_pieces(session.id, event_type, fields)
        self.store.append_next(session.id, head, tail, event_type, self.token, next(self._counter))
        return LoggedEvent(0, event_type, "")

    async def send(
        self, session: Session, client_msg_id: str, text: str, sender: str | None
    ) -> tuple[int, bool]:
        """A user message, once per clientMsgId across every process: (seq, duplicate).

        Answers once the message is in Redis, and (within SHOWN_TIMEOUT) once this
        process shows it, so a history read right after the 202 has it.
        """
        fields = {"clientMsgId": client_msg_id, "text": text, "connectionId": sender}
        head, tail = event_pieces(session.id, EventType.USER_MESSAGE, fields)
        try:
            seq, duplicate = await self.store.send_message_async(
                session.id, client_msg_id, head, tail, self._max_receipts
            )
        except redis.RedisError as exc:
            raise self.unavailable(exc) from None
        if seq == 0:
            raise session_unknown(session.id)
        await self.shown(session, seq, SHOWN_TIMEOUT)
        return seq, duplicate

    def end(self, session: Session) -> None:
        """Delete the session for every process; each shows its end when it reads it."""
        head, tail = event_pieces(session.id, EventType.SESSION_ENDED, {})
        self._ended.add(session.id)
        self.store.end(session.id, head, tail)
        self._sessions.delete(session.id, durable=False)

    def claim_driver(self, session: Session, connection_id: str) -> None:
        """Make this connection the session's driver everywhere; a driver on another
        process is told it was taken over (a notice its relay reads)."""
        self.store.claim_driver(session.id, connection_id)

    @staticmethod
    def unavailable(exc: BaseException) -> BridgeError:
        return BridgeError(
            503, ErrorCode.BUSY, f"the session store does not answer; retry: {exc}", retry_after=1
        )

    # -- waiting for what Redis holds ----------------------------------------------------

    async def shown(self, session: Session, seq: int, timeout: float | None = None) -> None:
        """Wait until this process shows the session's event `seq` (or it ended)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while session.log.last_seq < seq and session.id in self._tracked:
            changed = self._changed.setdefault(session.id, asyncio.Event())
            changed.clear()
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                return

    async def reached(self, session: Session, seq: int) -> None:
        """Wait until this process shows the session through `seq`, as far as Redis
        holds it: a client that moved here from another process replays from the
        last seq it showed, and this process may not have read that far yet."""
        if session.log.shown_seq >= seq:
            return
        try:
            newest = await self.store.last_seq(session.id)
        except redis.RedisError as exc:
            raise self.unavailable(exc) from None
        await self.shown(session, min(seq, newest), SHOWN_TIMEOUT)

    async def own_writes_shown(self, session: Session) -> None:
        """Wait until this process's writes to the session are in Redis and shown here.

        The seq of the newest is known from Redis's answer to it, so this costs no
        round trip of its own; only when that answer was lost is Redis asked."""
        while not self.store.closed:
            try:
                await self.store.flush()
                newest = self.store.written.get(session.id)
                if newest is None:
                    newest = await self.store.last_seq(session.id)
            except Exception:
                await asyncio.sleep(READ_RETRY_DELAY)  # Redis is away: its outage is logged
                continue
            await self.shown(session, newest)
            return

    # -- the reader ----------------------------------------------------------------------

    async def _read(self) -> None:
        # A connection of its own: an XREAD BLOCK holds it while it waits.
        client = redis.asyncio.Redis.from_url(
            self.store.url, decode_responses=True, socket_timeout=5, socket_connect_timeout=5
        )
        keys = self.store.keys
        failing = False
        try:
            while True:
                streams: dict[Any, Any] = {
                    keys.events(sid): f"{seq}-0" for sid, seq in self._positions.items()
                }
                streams[keys.notices] = self._notices_from
                try:
                    replies: Any = await client.xread(streams, count=1000, block=READ_BLOCK_MS)
                except redis.RedisError as exc:
                    if not failing:  # once per outage
                        self._log.error("chatbridge: relay cannot read from Redis: %s", exc)
                    failing = True
                    await asyncio.sleep(READ_RETRY_DELAY)
                    continue
                if failing:
                    self._log.warning("chatbridge: relay reads from Redis again")
                    failing = False
                for stream, entries in replies or []:
                    try:
                        self._received(stream, entries)
                    except Exception:  # a bug must not stop this process reading
                        self._log.exception("chatbridge: relay could not handle %s", stream)
        finally:
            await client.aclose()

    def _received(self, stream: str, entries: list[tuple[str, dict[str, str]]]) -> None:
        keys = self.store.keys
        if stream == keys.notices:
            self._notices_from = entries[-1][0]
            self._on_notices([fields for _, fields in entries])
            return
        session_id = stream[len(keys.prefix) + 3 : -len(":events")]
        events = [
            LoggedEvent(int(entry_id.split("-")[0]), f["t"], f["d"]) for entry_id, f in entries
        ]
        if session_id in self._positions:
            self._positions[session_id] = max(self._positions[session_id], events[-1].seq)
        self._ingest(session_id, events)

    # -- on the loop ----------------------------------------------------------------------

    def _on_notices(self, notices: list[dict[str, str]]) -> None:
        for notice in notices:
            if notice.get("k") == "created":
                self._on_created(notice["id"])
            elif notice.get("k") == "detached":
                self._on_detached(notice["id"], notice["conn"])

    def _on_detached(self, session_id: str, connection_id: str) -> None:
        session = self._sessions.get(session_id)
        if session is None or session.driver != connection_id:
            return  # not driven from here
        self._sessions.detach(session, connection_id)
        self._fanout.notify_detached(connection_id, session_id, DetachReason.TAKEN_OVER)

    def _ingest(self, session_id: str, events: list[LoggedEvent]) -> None:
        session = self._tracked.get(session_id)
        if session is None:
            return
        for event in events:
            if event.seq <= session.log.last_seq:
                continue  # already held (read from a position set before this batch)
            session.log.ingest(event)
            self._fanout.show(session, event)
            self._account(session, event)
        changed = self._changed.get(session_id)
        if changed is not None:
            changed.set()

    def _account(self, session: Session, event: LoggedEvent) -> None:
        """Keep `pending` and the open answer as the stream says, on every process."""
        if event.type == EventType.USER_MESSAGE:
            body = json.loads(event.data)
            session.pending.append(
                PendingInput(event.seq, body["clientMsgId"], body["text"], body.get("connectionId"))
            )
            self.on_input(session)
        elif event.type == EventType.MESSAGE_START:
            self.open_answers.add(session.id)
            reply_to = json.loads(event.data).get("replyTo")
            while (
                isinstance(reply_to, int) and session.pending and session.pending[0].seq <= reply_to
            ):
                session.pending.popleft()  # answers go in seq order: these are taken
        elif event.type == EventType.MESSAGE_END:
            self.open_answers.discard(session.id)
        elif event.type == EventType.SESSION_ENDED:
            self._end_here(session, event)

    def _end_here(self, session: Session, event: LoggedEvent) -> None:
        self._untrack(session.id)
        self._ended.discard(session.id)
        self.open_answers.discard(session.id)
        if self._sessions.get(session.id) is session:
            self._sessions.delete(session.id, durable=False)
        driver = session.driver
        if driver is not None:
            self._fanout.notify_detached(driver, session.id, DetachReason.SESSION_ENDED)
        self._fanout.end_sockets(session.id, CloseCode.SESSION_UNKNOWN, "session ended", event)

    def needs_owner(self) -> list[Session]:
        """Sessions with a message to answer or an answer left open (maybe by a dead owner)."""
        return [s for s in self._tracked.values() if s.pending or s.id in self.open_answers]
