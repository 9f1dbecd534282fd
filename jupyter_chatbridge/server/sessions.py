"""Session operations: create, delete, history, watch and drive, send.

Each operation is synchronous (no two requests interleave inside one) and
refuses bad input with a `BridgeError` before it changes anything. Durability
is the store's: the log feeds it, and `commit` is the barrier a handler awaits
before it promises anything (a 201, a 202, an `ack`).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..clock import Scheduler
from ..protocol import CloseCode, DetachReason, ErrorCode, EventType, client_id, dumps
from .agents import Ending
from .connections import ConnectionService
from .errors import BridgeError, session_unknown
from .fanout import Fanout
from .limits import BridgeLimits
from .runner import AgentRunner, StopOutcome
from .state import (
    Connection,
    LoggedEvent,
    PendingInput,
    SendReceipt,
    Session,
    SessionExists,
    SessionRegistry,
)
from .store import SessionStore

# A session's settings (`POST sessions` `settings`), serialised, at most this long.
MAX_SETTINGS_BYTES = 16384


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


SettingsValidator = Callable[[dict[str, Any]], dict[str, Any]]
"""The agent class's `validate_settings`: raises ValueError for settings it refuses."""


@dataclass(frozen=True)
class StopResult:
    """The answer to a Stop: which answer it stopped, or why nothing was."""

    session_id: str
    outcome: str  # a `StopOutcome` value
    message_id: str | None  # the answer it concerns (None: nothing was running)

    def body(self) -> dict[str, Any]:
        stopped = self.message_id if self.outcome == StopOutcome.STOPPED else None
        return {
            "sessionId": self.session_id,
            "stopped": stopped,
            "reason": self.outcome,
            "messageId": self.message_id,
        }


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
            400, ErrorCode.BAD_REQUEST, f"settings are over {MAX_SETTINGS_BYTES} bytes serialised"
        )
    return settings


class SessionService:
    """What a client can do to sessions."""

    def __init__(
        self,
        sessions: SessionRegistry,
        fanout: Fanout,
        runner: AgentRunner,
        connections: ConnectionService,
        limits: BridgeLimits,
        scheduler: Scheduler,
        store: SessionStore,
        validate_settings: SettingsValidator | None = None,
    ) -> None:
        self._validate_settings = validate_settings
        self._sessions = sessions
        self._fanout = fanout
        self._runner = runner
        self._connections = connections
        self._limits = limits
        self._scheduler = scheduler
        self.store = store
        self.relay: Any = None
        """With a Redis store, the `RedisRelay` (relay.py): sessions other processes
        created are found there, and sends and deletes go through Redis."""

    # -- sessions -----------------------------------------------------------------

    def session(self, session_id: str) -> Session:
        """The session, or a 404 `session_unknown`."""
        session = self._sessions.get(session_id)
        if session is None:
            if self.relay is not None:
                return self.relay.discover(session_id)  # type: ignore[no-any-return]
            raise session_unknown(session_id)
        return session

    def create(self, session_id: str | None, settings: dict[str, Any] | None = None) -> Session:
        """Create a session (with a generated id when none is given).

        `settings` (a JSON object, at most `MAX_SETTINGS_BYTES` serialised) are kept
        with the session and handed to its agent.
        """
        settings = _checked_settings(settings)
        if self._validate_settings is not None:
            try:
                settings = self._validate_settings(settings)
            except ValueError as exc:
                raise BridgeError(400, ErrorCode.BAD_REQUEST, str(exc)) from None
        if len(self._sessions) >= self._limits.max_sessions:
            raise BridgeError(
                429, ErrorCode.BUSY, f"too many sessions (limit {self._limits.max_sessions})"
            )
        try:
            session = self._sessions.create(
                session_id or f"s-{uuid.uuid4().hex[:12]}", self._scheduler.now(), settings
            )
            if self.relay is not None:
                self.relay.track(session)
            return session
        except SessionExists:
            raise BridgeError(
                409, ErrorCode.SESSION_EXISTS, f"session {session_id!r} already exists"
            ) from None

    def delete(self, session_id: str) -> None:
        """End a session: stop its agent, tell watchers and driver, close its sockets."""
        session = self.session(session_id)
        self._runner.cancel(session)
        if self.relay is not None:
            self.relay.end(session)  # its end is shown, here too, when read back from Redis
            return
        ended = self._fanout.publish(session, EventType.SESSION_ENDED, {})
        driver = session.driver
        if driver is not None:
            # After the watchers were shown the end, as on a store that commits at once.
            self._fanout.after_shown(
                lambda: self._fanout.notify_detached(driver, session_id, DetachReason.SESSION_ENDED)
            )
        self._sessions.delete(session_id)
        self._fanout.end_sockets(session_id, CloseCode.SESSION_UNKNOWN, "session ended", ended)

    async def stop_answer(self, session_id: str, message_id: str | None) -> StopResult:
        """Stop the session's running answer (the one named, if given); idempotent.

        Returns once the stopped answer's `message_end` is committed, so the
        answer describes what every client will see. Stopping nothing, or an
        answer that already ended, changes nothing.
        """
        session = self.session(session_id)
        outcome, concerned, ended = self._runner.stop_answer(session, message_id)
        if ended is not None:
            await asyncio.wait([ended])
            if ended.cancelled():  # deleted (or the server stopped) before it ended
                raise session_unknown(session_id)
            if ended.result() != Ending.STOPPED:  # it ended by itself before Stop reached it
                outcome = StopOutcome.ALREADY_ENDED
            await self.commit()
        return StopResult(session_id, outcome, concerned)

    def history(
        self, session_id: str, after: int, limit: int | None
    ) -> tuple[list[LoggedEvent], int]:
        """Events with seq > `after` (at most `limit`) and the session's last seq."""
        session = self.session(session_id)
        return session.log.shown_after(after, limit), session.log.shown_seq

    # -- watching and driving -----------------------------------------------------------

    def watch(self, connection: Connection, session_id: str, after_seq: int | None) -> int:
        """Deliver the session's events to `connection`: after `after_seq` first, then live."""
        session = self.session(session_id)
        watched = self._sessions.watched_by(connection.id)
        limit = self._limits.max_watches_per_connection
        if session_id not in watched and len(watched) >= limit:
            raise BridgeError(
                400, ErrorCode.BAD_REQUEST, f"a connection may watch at most {limit} sessions"
            )
        self._sessions.watch(session, connection.id)
        if after_seq is not None:
            # Pulled from the log in pieces as the client reads; live events of the
            # session reach this connection after its history, never before.
            self._fanout.catch_up(connection, session, after_seq)
        return session.log.shown_seq

    async def reached(self, session_id: str, seq: int) -> None:
        """Return once this process shows the session through `seq` (at once with
        one process; with Redis, once its relay has read that far, bounded)."""
        if self.relay is not None:
            await self.relay.reached(self.session(session_id), seq)

    def unwatch(self, connection: Connection, session_id: str) -> None:
        """Stop delivering a session's events to `connection`."""
        self._sessions.unwatch(self.session(session_id), connection.id)
        self._fanout.stop_catch_up(connection, session_id)

    def attach(self, connection: Connection, session_id: str) -> str:
        """Make `connection` the session's driver; the previous one is told it was taken over."""
        session = self.session(session_id)
        previous = self._sessions.attach(session, connection.id)
        if previous is not None:
            self._fanout.notify_detached(previous, session_id, DetachReason.TAKEN_OVER)
        if self.relay is not None:
            self.relay.claim_driver(session, connection.id)  # a driver elsewhere is told
        return client_id(connection.id, session_id)

    def detach(self, connection: Connection, session_id: str) -> None:
        """Stop driving; a connection that is not the driver changes nothing."""
        self._sessions.detach(self.session(session_id), connection.id)

    def suspend(self, connection: Connection, session_id: str) -> None:
        """Keep the driver role through this connection's expiry (page unload)."""
        self._sessions.suspend(self.session(session_id), connection.id)

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
        Nothing is durable yet: `send_durably` is what a handler answers with.
        """
        if self.relay is not None:
            raise RuntimeError("with a Redis store, Redis assigns the seq: use send_durably")
        session = self.session(session_id)
        self._check_message(text)
        receipt = session.log.receipt(client_msg_id) or session.log.resubmit(client_msg_id)
        if receipt is not None:
            return SendResult(receipt, duplicate=True)
        self._check_room(session)
        sender = self._connections.sender(connection_id, owner)
        event = self._fanout.publish(
            session,
            EventType.USER_MESSAGE,
            {"clientMsgId": client_msg_id, "text": text, "connectionId": sender},
        )
        receipt = session.log.accept(event, client_msg_id)
        session.pending.append(PendingInput(event.seq, client_msg_id, text, sender))
        self._runner.ensure(session)
        return SendResult(receipt, duplicate=False)

    def _check_message(self, text: str) -> None:
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:  # a lone surrogate (JSON allows "\ud800"): not text
            raise BridgeError(
                400, ErrorCode.BAD_REQUEST, "text is not valid Unicode (lone surrogate)"
            ) from None
        if size > self._limits.max_message_bytes:
            raise BridgeError(
                413,
                ErrorCode.TOO_LARGE,
                f"message text is over {self._limits.max_message_bytes} bytes",
            )

    def _check_room(self, session: Session) -> None:
        if len(session.pending) >= self._limits.max_pending_inputs:
            raise BridgeError(
                429,
                ErrorCode.BUSY,
                f"session {session.id!r} has {len(session.pending)} messages waiting; retry later",
                retry_after=self._limits.busy_retry_after,
            )

    async def send_durably(
        self,
        session_id: str,
        client_msg_id: str,
        text: str,
        connection_id: str | None,
        owner: str | None = None,
    ) -> SendResult:
        """`send`, then wait until the message and its receipt are committed.

        A failed commit (a 503) retracts the receipt, so a retry is never told
        `duplicate: true` about a message the store may not hold; the retry writes
        it again (same seq) and is answered once that commit succeeds.
        """
        if self.relay is not None:
            return await self._send_through_redis(
                session_id, client_msg_id, text, connection_id, owner
            )
        result = self.send(session_id, client_msg_id, text, connection_id, owner)
        log = self.session(session_id).log
        try:
            # Watchers are shown the message before its sender hears back, in the commit
            # that also holds its answer's start (this commit is then a no-op).
            await self._fanout.wait_shown()
            # A duplicate waits too: its first answer may have been a 503 whose write
            # is being retried (or was just written again).
            await self.commit()
        except BridgeError:
            log.retract(client_msg_id)
            raise
        if log.is_retracted(client_msg_id):
            # Another request's commit of these writes failed meanwhile and retracted them.
            raise self._not_durable("the store failed to save this message; retry it")
        return result

    async def _send_through_redis(
        self,
        session_id: str,
        client_msg_id: str,
        text: str,
        connection_id: str | None,
        owner: str | None,
    ) -> SendResult:
        """A send with a Redis store: Redis checks the receipt and assigns the seq at once,
        so the same clientMsgId sent to two processes is accepted once."""
        session = self.session(session_id)
        self._check_message(text)
        self._check_room(session)
        sender = self._connections.sender(connection_id, owner)
        seq, duplicate = await self.relay.send(session, client_msg_id, text, sender)
        return SendResult(SendReceipt(session_id, client_msg_id, seq), duplicate)

    async def commit(self) -> None:
        """Wait until everything so far is durable; any store failure is a 503 busy."""
        try:
            await self.store.flush(urgent=True)  # a client waits for exactly this
        except Exception as exc:
            raise self._not_durable(
                f"not saved durably yet; retry the same request: {exc}"
            ) from None

    def _not_durable(self, message: str) -> BridgeError:
        return BridgeError(503, ErrorCode.BUSY, message, retry_after=self._limits.busy_retry_after)
