"""`ChatBridge`: the one object that owns all server-side state and runs the agents.

Handlers are thin glue around it. It never touches a socket: streams and
session sockets are handed in as small objects (`FrameSink`, `SessionSocket`)
it writes bytes or text to. Every state change is synchronous, so no two
requests can interleave inside one operation.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ..clock import Scheduler
from ..protocol import (
    PROTOCOL_VERSION,
    CloseCode,
    DetachReason,
    ErrorCode,
    EventType,
    client_id,
    dumps,
    sse_payload,
)
from .agents import Agent, UserMessage
from .state import (
    CidOwnedElsewhere,
    Connection,
    ConnectionRegistry,
    LoggedEvent,
    ReplayResult,
    SendReceipt,
    Session,
    SessionExists,
    SessionRegistry,
    StreamRegistry,
)
from .state.sessions import PendingInput
from .store import MemoryStore, SessionStore, StoreError

# The store's copy is trimmed to the in-memory window every this many events of a
# session: one cheap range delete now and then instead of one per event.
TRIM_EVERY = 256

# A session's settings (`POST sessions` `settings`), serialised, at most this long.
MAX_SETTINGS_BYTES = 16384

INTERRUPTED_MESSAGE = "the server restarted during this answer"


class FrameSink(Protocol):
    """A live event stream (the SSE response) as the bridge sees it."""

    def send(self, frame_id: int | None, payload: bytes) -> None:
        """Queue one frame; `frame_id` None for frames without an id (welcome, ping)."""

    def close(self) -> None:
        """End the stream (it was replaced by a newer one, or the server stops)."""


class SessionSocket(Protocol):
    """A WebSocket bound to one session."""

    def send_event(self, data: str) -> None:
        """Send one session event (one-line JSON) as a text frame."""

    def end(self, code: int, reason: str) -> None:
        """Close the socket with an application close code."""


@dataclass
class BridgeLimits:
    """Every tunable the bridge enforces; `ChatBridgeApp` fills it from traitlets."""

    inactive_ttl: float = 60.0
    replay_buffer_size: int = 1000
    max_message_bytes: int = 65536
    max_pending_inputs: int = 100
    max_session_events: int = 10000
    max_receipts_per_session: int = 10000
    max_sessions: int = 1000
    max_watches_per_connection: int = 100
    max_connections_per_user: int = 200
    max_stream_buffer_bytes: int = 1 << 20
    busy_retry_after: int = 1


class BridgeError(Exception):
    """A refusal with the contract's status and error code."""

    def __init__(
        self, status: int, code: ErrorCode, message: str, *, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after

    def body(self) -> dict[str, str]:
        """The JSON error body of the contract."""
        return {"error": self.message, "code": self.code.value}


@dataclass(frozen=True)
class SendResult:
    """The answer to a send: its receipt, and whether it repeated an earlier one."""

    receipt: SendReceipt
    duplicate: bool

    def body(self) -> dict[str, Any]:
        return {
            "accepted": True,
            "sessionId": self.receipt.session_id,
            "clientMsgId": self.receipt.client_msg_id,
            "seq": self.receipt.seq,
            "duplicate": self.duplicate,
        }


AgentFactory = Callable[[str, dict[str, Any]], Agent]
"""Makes a session's agent from its id and settings."""


class ChatBridge:
    """Connections, streams, sessions and agent runs of one server."""

    def __init__(
        self,
        limits: BridgeLimits,
        scheduler: Scheduler,
        agent_factory: AgentFactory,
        log: logging.Logger | logging.LoggerAdapter[Any] | None = None,
        store: SessionStore | None = None,
    ) -> None:
        self.limits = limits
        self.store: SessionStore = store if store is not None else MemoryStore()
        self.scheduler = scheduler
        self.epoch = uuid.uuid4().hex[:16]
        self.log = log or logging.getLogger(__name__)
        self._agent_factory = agent_factory
        self.connections = ConnectionRegistry(
            scheduler,
            inactive_ttl=limits.inactive_ttl,
            replay_buffer_size=limits.replay_buffer_size,
            on_expired=self._on_connection_expired,
        )
        self.streams: StreamRegistry[FrameSink] = StreamRegistry()
        self.sessions = SessionRegistry(
            max_events=limits.max_session_events, max_receipts=limits.max_receipts_per_session
        )
        self._sockets: dict[str, set[SessionSocket]] = {}
        self._runners: dict[str, asyncio.Task[None]] = {}
        # Restored sessions with accepted but unanswered messages: their runs start
        # once an event loop runs (see `resume_restored_runs`).
        self._restored_runs: set[str] = set()
        self._background: set[asyncio.Task[Any]] = set()

    # -- event streams ------------------------------------------------------------

    def open_stream(
        self, cid: str | None, owner: str, last_event_id: int | None, stream: FrameSink
    ) -> dict[str, Any]:
        """Attach a new stream to its connection, send the welcome and any replay.

        `cid` must be normalised (or None for a server-assigned id). Returns the welcome.
        """
        known = cid is not None and self.connections.get(cid) is not None
        limit = self.limits.max_connections_per_user
        if not known and self.connections.count_owned_by(owner) >= limit:
            raise BridgeError(
                429,
                ErrorCode.BUSY,
                f"too many connections for this user (limit {limit})",
                retry_after=int(self.limits.inactive_ttl) or 1,
            )
        try:
            connection, resumed = self.connections.open(cid, owner)
        except CidOwnedElsewhere:
            self.log.warning("chatbridge: refused a cid registered by another user")
            raise BridgeError(
                403, ErrorCode.FORBIDDEN, "this connection id belongs to another user"
            ) from None
        displaced = self.streams.replace(connection.id, stream)
        if displaced is not None:
            # Its close handler will run later and find it is no longer current.
            displaced.close()
        if resumed and last_event_id is not None:
            replay = connection.replay.since(last_event_id)
        else:
            # A connection we don't hold cannot replay what the client asks for.
            replay = ReplayResult([], bool(last_event_id))
        welcome = {
            "connectionId": connection.id,
            "stable": connection.stable,
            "resumed": resumed,
            "replayed": len(replay.frames),
            "gap": replay.gap,
            "epoch": self.epoch,
            "protocol": PROTOCOL_VERSION,
        }
        stream.send(None, sse_payload(EventType.WELCOME, dumps(welcome)))
        for frame in replay.frames:
            stream.send(frame.frame_id, frame.payload)
        if resumed:
            self.log.info(
                "chatbridge: %s reconnected (replayed %d frames%s)",
                connection.id,
                len(replay.frames),
                ", gap" if replay.gap else "",
            )
        return welcome

    def close_stream(self, connection_id: str, stream: FrameSink) -> None:
        """A stream ended. Only the connection's current stream may deactivate it."""
        if self.streams.remove_if_current(connection_id, stream):
            self.connections.deactivate(connection_id)

    def ping_streams(self, payload: bytes) -> None:
        """Write a keep-alive comment to every live stream."""
        for stream in self.streams:
            stream.send(None, payload)

    def _on_connection_expired(self, connection: Connection) -> None:
        detached = self.sessions.release_connection(connection.id)
        if connection.stable:
            self.log.info(
                "chatbridge: %s expired after %ss inactive; detached %s",
                connection.id,
                self.limits.inactive_ttl,
                [s.id for s in detached] or "nothing",
            )

    # -- connection lookup ----------------------------------------------------------

    def connection_for(self, connection_id: str | None, owner: str) -> Connection:
        """The caller's connection, which must exist and belong to the caller."""
        connection = self.connections.get(connection_id) if connection_id else None
        if connection is None:
            raise BridgeError(
                404,
                ErrorCode.CONNECTION_UNKNOWN,
                "unknown connection: open the event stream and use its connectionId",
            )
        if connection.owner != owner:
            raise BridgeError(403, ErrorCode.FORBIDDEN, "that connection belongs to another user")
        return connection

    # -- sessions -----------------------------------------------------------------

    def session(self, session_id: str) -> Session:
        """The session, or a 404 `session_unknown`."""
        if self._restored_runs:
            self.resume_restored_runs()
        session = self.sessions.get(session_id)
        if session is None:
            raise BridgeError(
                404, ErrorCode.SESSION_UNKNOWN, f"session {session_id!r} does not exist"
            )
        return session

    def create_session(
        self, session_id: str | None, settings: dict[str, Any] | None = None
    ) -> Session:
        """Create a session (with a generated id when none is given).

        `settings` (a JSON object, at most `MAX_SETTINGS_BYTES` serialised) are kept
        with the session and handed to its agent.
        """
        settings = self._checked_settings(settings)
        if len(self.sessions) >= self.limits.max_sessions:
            raise BridgeError(
                429, ErrorCode.BUSY, f"too many sessions (limit {self.limits.max_sessions})"
            )
        try:
            session = self.sessions.create(
                session_id or f"s-{uuid.uuid4().hex[:12]}", self.scheduler.now(), settings
            )
        except SessionExists:
            raise BridgeError(
                409, ErrorCode.SESSION_EXISTS, f"session {session_id!r} already exists"
            ) from None
        # Wall-clock time: the scheduler's clock means nothing to the next process.
        self.store.create_session(session.id, time.time(), session.settings)
        return session

    @staticmethod
    def _checked_settings(settings: Any) -> dict[str, Any]:
        if settings is None:
            return {}
        if not isinstance(settings, dict):
            raise BridgeError(400, ErrorCode.BAD_REQUEST, "settings must be a JSON object")
        try:
            size = len(dumps(settings).encode("utf-8"))
        except (TypeError, ValueError, UnicodeEncodeError):
            raise BridgeError(400, ErrorCode.BAD_REQUEST, "settings must be plain JSON") from None
        if size > MAX_SETTINGS_BYTES:
            raise BridgeError(
                400,
                ErrorCode.BAD_REQUEST,
                f"settings are over {MAX_SETTINGS_BYTES} bytes serialised",
            )
        return settings

    def delete_session(self, session_id: str) -> None:
        """End a session: stop its agent, tell watchers and driver, close its sockets."""
        session = self.session(session_id)
        runner = self._runners.pop(session_id, None)
        if runner is not None:
            runner.cancel()
        self._publish(session, EventType.SESSION_ENDED, {})
        if session.driver is not None:
            self._notify_detached(session.driver, session.id, DetachReason.SESSION_ENDED)
        self.sessions.delete(session_id)
        self.store.delete_session(session_id)
        self._restored_runs.discard(session_id)
        for socket in self._sockets.pop(session_id, set()):
            socket.end(CloseCode.SESSION_UNKNOWN, "session ended")
        if session.agent is not None:
            self._spawn(session.agent.close())

    def history(
        self, session_id: str, after: int, limit: int | None
    ) -> tuple[list[LoggedEvent], int]:
        """Events with seq > `after` (at most `limit`) and the session's last seq."""
        session = self.session(session_id)
        return session.log.after(after, limit), session.log.last_seq

    # -- watching and driving -----------------------------------------------------------

    def watch(self, connection: Connection, session_id: str, after_seq: int | None) -> int:
        """Deliver the session's events to `connection`: after `after_seq` first, then live."""
        session = self.session(session_id)
        watched = self.sessions.watched_by(connection.id)
        if session_id not in watched and len(watched) >= self.limits.max_watches_per_connection:
            raise BridgeError(
                400,
                ErrorCode.BAD_REQUEST,
                f"a connection may watch at most {self.limits.max_watches_per_connection} sessions",
            )
        if after_seq is not None:
            # Synchronous with the registration below: no live event can slip in between.
            for event in session.log.after(after_seq):
                self._deliver(connection, sse_payload(event.type, event.data))
        self.sessions.watch(session, connection.id)
        return session.log.last_seq

    def unwatch(self, connection: Connection, session_id: str) -> None:
        """Stop delivering a session's events to `connection`."""
        self.sessions.unwatch(self.session(session_id), connection.id)

    def attach(self, connection: Connection, session_id: str) -> str:
        """Make `connection` the session's driver; the previous one is told it was taken over."""
        session = self.session(session_id)
        previous = self.sessions.attach(session, connection.id)
        if previous is not None:
            self._notify_detached(previous, session_id, DetachReason.TAKEN_OVER)
        return client_id(connection.id, session_id)

    def detach(self, connection: Connection, session_id: str) -> None:
        """Stop driving; a connection that is not the driver changes nothing."""
        self.sessions.detach(self.session(session_id), connection.id)

    def suspend(self, connection: Connection, session_id: str) -> None:
        """Keep the driver role through this connection's expiry (page unload)."""
        self.sessions.suspend(self.session(session_id), connection.id)

    # -- sending ----------------------------------------------------------------------

    def send(
        self,
        session_id: str,
        client_msg_id: str,
        text: str,
        connection_id: str | None,
        owner: str | None = None,
    ) -> SendResult:
        """Accept a user message once per clientMsgId, in order, and queue it for the agent.

        The message is attributed to `connection_id` only if that connection exists
        and belongs to `owner`: nobody can speak as another user's connection.
        """
        session = self.session(session_id)
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:  # a lone surrogate (JSON allows "\ud800"): not text
            raise BridgeError(
                400, ErrorCode.BAD_REQUEST, "text is not valid Unicode (lone surrogate)"
            ) from None
        if size > self.limits.max_message_bytes:
            raise BridgeError(
                413,
                ErrorCode.TOO_LARGE,
                f"message text is over {self.limits.max_message_bytes} bytes",
            )
        receipt = session.log.receipt(client_msg_id)
        if receipt is not None:
            return SendResult(receipt, duplicate=True)
        if len(session.pending) >= self.limits.max_pending_inputs:
            raise BridgeError(
                429,
                ErrorCode.BUSY,
                f"session {session_id!r} has {len(session.pending)} messages waiting; retry later",
                retry_after=self.limits.busy_retry_after,
            )
        if connection_id is not None:
            sender = self.connections.get(connection_id)
            if sender is None or sender.owner != owner:
                connection_id = None
        event = self._publish(
            session,
            EventType.USER_MESSAGE,
            {"clientMsgId": client_msg_id, "text": text, "connectionId": connection_id},
        )
        receipt = SendReceipt(session_id, client_msg_id, event.seq)
        session.log.remember(receipt)
        self.store.remember(receipt)
        session.pending.append(PendingInput(event.seq, client_msg_id, text, connection_id))
        self._ensure_runner(session)
        return SendResult(receipt, duplicate=False)

    # -- session sockets -------------------------------------------------------------------

    def add_socket(self, session_id: str, socket: SessionSocket, after_seq: int | None) -> None:
        """Bind a WebSocket to a session: replay after `after_seq`, then live events."""
        session = self.session(session_id)
        if after_seq is not None:
            for event in session.log.after(after_seq):
                socket.send_event(event.data)
        self._sockets.setdefault(session_id, set()).add(socket)

    def remove_socket(self, session_id: str, socket: SessionSocket) -> None:
        """Forget a closed WebSocket."""
        sockets = self._sockets.get(session_id)
        if sockets is not None:
            sockets.discard(socket)
            if not sockets:
                del self._sockets[session_id]

    # -- durability -------------------------------------------------------------------

    def restore(self) -> int:
        """Rebuild the sessions a previous server process stored; returns how many.

        An answer the restart cut short is closed with an `error` event and its
        `message_end`, so no client waits on it forever; user messages that were
        accepted but never answered are queued for the agent again (their runs
        start with `resume_restored_runs`).
        """
        stored_sessions = self.store.load()
        for stored in stored_sessions:
            session = self.sessions.create(stored.id, self.scheduler.now(), stored.settings)
            session.log.load(stored.events, stored.last_seq, stored.receipts)
            self._recover_answers(session)
            # The limits may have shrunk since: the store keeps what memory keeps.
            self.store.trim(session.id, session.log.first_seq, session.log.first_receipt_seq)
        if len(self.sessions) > self.limits.max_sessions:
            self.log.warning(
                "chatbridge: restored %d sessions, over max_sessions (%d); "
                "none is dropped, new ones are refused until some are deleted",
                len(self.sessions),
                self.limits.max_sessions,
            )
        return len(stored_sessions)

    def _recover_answers(self, session: Session) -> None:
        """Close an answer cut by the restart; queue accepted messages never answered."""
        open_answer: str | None = None
        open_has_error = False
        answered = 0  # the highest user-message seq an answer was started for
        user_messages: list[LoggedEvent] = []
        for event in session.log.after(0):
            # Only the few control events are parsed; deltas are skipped by type.
            if event.type == EventType.MESSAGE_START:
                start = json.loads(event.data)
                open_answer, open_has_error = start.get("messageId"), False
                reply_to = start.get("replyTo")
                if isinstance(reply_to, int):
                    answered = max(answered, reply_to)
            elif event.type == EventType.MESSAGE_END:
                open_answer = None
            elif event.type == EventType.ERROR and open_answer is not None:
                open_has_error = True
            elif event.type == EventType.USER_MESSAGE:
                user_messages.append(event)
        if open_answer is not None:
            self.log.warning(
                "chatbridge: session %s: closing answer %s, cut short by the restart",
                session.id,
                open_answer,
            )
            if not open_has_error:
                self._publish(
                    session,
                    EventType.ERROR,
                    {"message": INTERRUPTED_MESSAGE, "messageId": open_answer},
                )
            self._publish(session, EventType.MESSAGE_END, {"messageId": open_answer})
        for event in user_messages:
            if event.seq <= answered:
                continue
            body = json.loads(event.data)
            session.pending.append(
                PendingInput(event.seq, body["clientMsgId"], body["text"], body.get("connectionId"))
            )
        if session.pending:
            self._restored_runs.add(session.id)

    def resume_restored_runs(self) -> None:
        """Start the agent runs of restored sessions with unanswered messages.

        Needs a running event loop: the app calls it once the server starts, and
        any request does it lazily (in-process servers never run the start hook).
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        waiting, self._restored_runs = self._restored_runs, set()
        for session_id in sorted(waiting):
            session = self.sessions.get(session_id)
            if session is not None and session.pending:
                self.log.info(
                    "chatbridge: session %s: answering %d messages accepted before the restart",
                    session_id,
                    len(session.pending),
                )
                self._ensure_runner(session)

    async def commit(self) -> None:
        """Wait until everything so far is durable; a store failure is a 503 to the caller.

        A `202 accepted` is only sent after this, so it means the message survives a crash.
        """
        try:
            await self.store.flush()
        except StoreError as exc:
            raise BridgeError(
                503,
                ErrorCode.BUSY,
                f"not saved durably yet; retry the same request: {exc}",
                retry_after=self.limits.busy_retry_after,
            ) from None

    # -- lifecycle ------------------------------------------------------------------

    async def shutdown(self) -> None:
        """Stop every agent run and end every stream and socket."""
        runners = list(self._runners.values())
        self._runners.clear()
        for task in runners:
            task.cancel()
        await asyncio.gather(*runners, return_exceptions=True)
        for stream in self.streams:
            stream.close()
        for sockets in list(self._sockets.values()):
            for socket in list(sockets):
                socket.end(CloseCode.GOING_AWAY, "server stopping")
        self._sockets.clear()
        agents = [s.agent for s in self.sessions if s.agent is not None]
        await asyncio.gather(*(a.close() for a in agents), return_exceptions=True)

    # -- internals --------------------------------------------------------------------

    def _publish(self, session: Session, event_type: str, fields: dict[str, Any]) -> LoggedEvent:
        """Log a session event and fan it out: serialised once, shared by every receiver."""
        event = session.log.append(event_type, fields)
        # Memory serves fan-out and history; the store only records (a queue.put).
        self.store.append(session.id, event)
        if event.seq % TRIM_EVERY == 0:
            self.store.trim(session.id, session.log.first_seq, session.log.first_receipt_seq)
        if session.watchers:
            payload = sse_payload(event.type, event.data)
            get = self.connections.get
            for connection_id in session.watchers:
                connection = get(connection_id)
                if connection is not None:
                    self._deliver(connection, payload)
        sockets = self._sockets.get(session.id)
        if sockets:
            for socket in sockets:
                socket.send_event(event.data)
        return event

    def _deliver(self, connection: Connection, payload: bytes) -> None:
        # Frames get an id and a replay slot even while the connection has no
        # stream, so a reconnect within the TTL replays them.
        frame_id = connection.next_frame_id()
        connection.replay.append(frame_id, payload)
        stream = self.streams.get(connection.id)
        if stream is not None:
            stream.send(frame_id, payload)

    def _notify_detached(self, connection_id: str, session_id: str, reason: str) -> None:
        connection = self.connections.get(connection_id)
        if connection is not None:
            data = dumps({"sessionId": session_id, "reason": reason})
            self._deliver(connection, sse_payload(EventType.DETACHED, data))

    def _ensure_runner(self, session: Session) -> None:
        if session.id not in self._runners:
            self._runners[session.id] = asyncio.get_running_loop().create_task(
                self._run_agent(session)
            )

    async def _run_agent(self, session: Session) -> None:
        """Answer the session's queued messages one at a time, in seq order."""
        try:
            while session.pending:
                message = session.pending.popleft()
                session.running = True
                await self._answer(session, message)
        finally:
            session.running = False
            # No await since the loop's last check of `pending`, so a send cannot
            # have queued input that this runner would strand.
            if self._runners.get(session.id) is asyncio.current_task():
                del self._runners[session.id]

    async def _answer(self, session: Session, message: PendingInput) -> None:
        message_id = f"m{message.seq}"
        self._publish(
            session, EventType.MESSAGE_START, {"messageId": message_id, "replyTo": message.seq}
        )
        try:
            if session.agent is None:
                session.agent = self._agent_factory(session.id, session.settings)
            user_message = UserMessage(
                session.id, message.seq, message.client_msg_id, message.text, message.connection_id
            )
            async for chunk in session.agent.reply(user_message):
                if chunk:
                    self._publish(
                        session, EventType.BLOCK_DELTA, {"messageId": message_id, "text": chunk}
                    )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.log.exception("chatbridge: agent failed in session %s", session.id)
            self._publish(
                session,
                EventType.ERROR,
                {"message": f"agent failed: {exc}", "messageId": message_id},
            )
        self._publish(session, EventType.MESSAGE_END, {"messageId": message_id})

    def _spawn(self, coro: Any) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            coro.close()
            return
        # The loop keeps only a weak reference to tasks: hold one until it is done.
        task = loop.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
