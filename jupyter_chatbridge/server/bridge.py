"""`ChatBridge`: the facade handlers talk to. It builds the parts and delegates.

Where each job lives:

- `connections.ConnectionService`: event streams (welcome, replay) and finding
  the caller's connection;
- `sessions.SessionService`: session create/delete/history, watch and drive,
  send, and the durability barrier (`commit`);
- `fanout.Fanout`: publishing an event once to watchers' streams and session sockets;
- `runner.AgentRunner`: the agent runs;
- `recovery.recover`: what a restart must do, as a pure function of the event log;
- `state`: the I/O-free registries; `store`: the durable record, fed by the logs.

Every state change is synchronous, so no two requests interleave inside one operation.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from ..clock import Scheduler
from ..protocol import CloseCode
from .connections import ConnectionService
from .errors import BridgeError
from .fanout import Fanout, FrameSink, SessionSocket
from .leases import LeasedRunner
from .limits import BridgeLimits
from .metrics import NO_METRICS, BridgeMetrics
from .recovery import INTERRUPTED_MESSAGE, recover
from .relay import RedisRelay
from .runner import AgentFactory, AgentRunner
from .sessions import (
    MAX_SETTINGS_BYTES,
    SendResult,
    SessionService,
    SettingsValidator,
    StopResult,
)
from .state import (
    Connection,
    ConnectionRegistry,
    LoggedEvent,
    Session,
    SessionRegistry,
    StreamRegistry,
)
from .store import MemoryStore, SessionStore
from .store.redis import RedisStore

__all__ = [
    "INTERRUPTED_MESSAGE",
    "MAX_SETTINGS_BYTES",
    "AgentFactory",
    "BridgeError",
    "BridgeLimits",
    "ChatBridge",
    "FrameSink",
    "SendResult",
    "SessionSocket",
    "StopResult",
]


class ChatBridge:
    """Connections, streams, sessions and agent runs of one server."""

    def __init__(
        self,
        limits: BridgeLimits,
        scheduler: Scheduler,
        agent_factory: AgentFactory,
        log: logging.Logger | logging.LoggerAdapter[Any] | None = None,
        store: SessionStore | None = None,
        metrics: BridgeMetrics = NO_METRICS,
        validate_settings: SettingsValidator | None = None,
    ) -> None:
        self.limits = limits
        self.metrics = metrics
        """What this bridge records for `/metrics` (`NO_METRICS`: nothing)."""
        self.scheduler = scheduler
        self.log = log or logging.getLogger(__name__)
        store = store if store is not None else MemoryStore()
        self.connections = ConnectionRegistry(
            scheduler,
            inactive_ttl=limits.inactive_ttl,
            replay_buffer_size=limits.replay_buffer_size,
            on_expired=self._on_connection_expired,
        )
        self.streams: StreamRegistry[FrameSink] = StreamRegistry()
        # The store is the sessions' one sink: every durable change reaches it from there.
        self.sessions = SessionRegistry(
            max_events=limits.max_session_events,
            max_receipts=limits.max_receipts_per_session,
            sink=store,
        )
        self.fanout = Fanout(
            self.connections, self.streams, self.sessions, store, scheduler, self.log
        )
        self.fanout.metrics = metrics
        self.relay: RedisRelay | None = None
        self.runner: AgentRunner
        if isinstance(store, RedisStore):
            # Many processes on one Redis: seqs from Redis, events shown as read back,
            # one agent run per session under a lease (relay.py, leases.py).
            self.relay = RedisRelay(
                store,
                self.sessions,
                self.fanout,
                scheduler.now,
                limits.max_receipts_per_session,
                self.log,
            )
            self.fanout.relay = self.relay
            self.runner = LeasedRunner(
                self.fanout,
                agent_factory,
                self.log,
                self.relay,
                limits.agent_lease_seconds,
                scheduler,
                limits.max_context_chars,
            )
        else:
            self.runner = AgentRunner(
                self.fanout, agent_factory, self.log, max_context_chars=limits.max_context_chars
            )
        self.runner.metrics = metrics
        self.connection_service = ConnectionService(
            self.connections, self.streams, limits, uuid.uuid4().hex[:16], self.log
        )
        self.session_service = SessionService(
            self.sessions,
            self.fanout,
            self.runner,
            self.connection_service,
            limits,
            scheduler,
            store,
            validate_settings,
        )
        self.session_service.relay = self.relay
        metrics.track(self)

    @property
    def store(self) -> SessionStore:
        """The durable record (its `flush` is the commit barrier)."""
        return self.session_service.store

    @store.setter
    def store(self, store: SessionStore) -> None:
        # Replaces the commit barrier only (a wrapper around the same store, as the tests
        # use); the sessions keep writing to the store they were built with.
        self.session_service.store = self.fanout.store = store

    @property
    def epoch(self) -> str:
        """The lifetime of this server's state, sent in every welcome."""
        return self.connection_service.epoch

    @epoch.setter
    def epoch(self, epoch: str) -> None:
        self.connection_service.epoch = epoch

    # -- streams and connections (ConnectionService) ----------------------------------

    def open_stream(
        self, cid: str | None, owner: str, last_event_id: int | None, stream: FrameSink
    ) -> dict[str, Any]:
        """Attach a stream to its connection; returns the welcome it was sent."""
        welcome = self.connection_service.open_stream(cid, owner, last_event_id, stream)
        self.metrics.record_stream_opened(welcome)
        return welcome

    def close_stream(self, connection_id: str, stream: FrameSink) -> None:
        """A stream ended (only the current one deactivates its connection)."""
        self.connection_service.close_stream(connection_id, stream)

    def ping_streams(self) -> None:
        """Write its keep-alive frame to every live stream."""
        self.connection_service.ping_streams()

    def connection_for(self, connection_id: str | None, owner: str) -> Connection:
        """The caller's connection, which must exist and belong to the caller."""
        return self.connection_service.connection_for(connection_id, owner)

    def _on_connection_expired(self, connection: Connection) -> None:
        self.metrics.retire_connection(connection)
        detached = self.sessions.release_connection(connection.id)
        if connection.stable:
            self.log.info(
                "chatbridge: %s expired after %ss inactive; detached %s",
                connection.id,
                self.limits.inactive_ttl,
                [s.id for s in detached] or "nothing",
            )

    # -- sessions (SessionService) ------------------------------------------------------

    def session(self, session_id: str) -> Session:
        """The session, or a 404 `session_unknown`. Never starts anything."""
        return self.session_service.session(session_id)

    def create_session(
        self, session_id: str | None, settings: dict[str, Any] | None = None
    ) -> Session:
        """Create a session (generated id when none is given) with its agent settings."""
        return self.session_service.create(session_id, settings)

    def delete_session(self, session_id: str) -> None:
        """End a session: stop its agent, tell watchers and driver, close its sockets."""
        self.session_service.delete(session_id)

    def history(
        self, session_id: str, after: int, limit: int | None
    ) -> tuple[list[LoggedEvent], int]:
        """Events with seq > `after` (at most `limit`) and the session's last seq."""
        return self.session_service.history(session_id, after, limit)

    def drain(self, connection_id: str, budget: int) -> bool:
        """Send a stream up to about `budget` bytes of the history it is owed (its
        client read what it had); True while more is owed."""
        connection = self.connections.get(connection_id)
        return connection is not None and self.fanout.drain(connection, budget)

    def watch(self, connection: Connection, session_id: str, after_seq: int | None) -> int:
        """Deliver the session's events to `connection` (after `after_seq` first)."""
        return self.session_service.watch(connection, session_id, after_seq)

    async def reached(self, session_id: str, seq: int) -> None:
        """Return once this process shows the session through `seq`: a replay after
        `seq` must not send that seq again live (another process showed it first)."""
        await self.session_service.reached(session_id, seq)

    def unwatch(self, connection: Connection, session_id: str) -> None:
        """Stop delivering a session's events to `connection`."""
        self.session_service.unwatch(connection, session_id)

    def attach(self, connection: Connection, session_id: str) -> str:
        """Make `connection` the driver; returns its clientId."""
        return self.session_service.attach(connection, session_id)

    def detach(self, connection: Connection, session_id: str) -> None:
        """Stop driving (a connection that is not the driver changes nothing)."""
        self.session_service.detach(connection, session_id)

    def suspend(self, connection: Connection, session_id: str) -> None:
        """Keep the driver role through this connection's expiry."""
        self.session_service.suspend(connection, session_id)

    def send(
        self,
        session_id: str,
        client_msg_id: str,
        text: str,
        connection_id: str | None,
        owner: str | None = None,
    ) -> SendResult:
        """Accept a user message once per clientMsgId (not yet durable; see `send_durably`)."""
        return self.session_service.send(session_id, client_msg_id, text, connection_id, owner)

    async def send_durably(
        self,
        session_id: str,
        client_msg_id: str,
        text: str,
        connection_id: str | None,
        owner: str | None = None,
    ) -> SendResult:
        """Accept a user message and return once it is committed (else a 503)."""
        started = time.perf_counter()
        try:
            result = await self.session_service.send_durably(
                session_id, client_msg_id, text, connection_id, owner
            )
        except BridgeError as refusal:
            self.metrics.record_send_refused(refusal.code.value)
            raise
        self.metrics.record_send(result.duplicate, time.perf_counter() - started)
        return result

    async def stop_answer(self, session_id: str, message_id: str | None = None) -> StopResult:
        """Stop the running answer (or the one named); returns once its end is committed."""
        return await self.session_service.stop_answer(session_id, message_id)

    async def commit(self) -> None:
        """Wait until everything so far is durable; a store failure is a 503."""
        await self.session_service.commit()

    # -- session sockets (Fanout) ---------------------------------------------------------

    def add_socket(self, session_id: str, socket: SessionSocket, after_seq: int | None) -> None:
        """Bind a WebSocket to a session: replay after `after_seq`, then live events."""
        self.fanout.add_socket(self.session(session_id), socket, after_seq)

    def remove_socket(self, session_id: str, socket: SessionSocket) -> None:
        """Forget a closed WebSocket."""
        self.fanout.remove_socket(session_id, socket)

    # -- restart and lifecycle -------------------------------------------------------------

    def restore(self) -> int:
        """Rebuild the sessions a previous server process stored; returns how many.

        An answer the restart cut short is closed (see `recovery.recover`); user
        messages accepted but never answered are queued again, and their runs
        start with `start_restored_runs`.
        """
        stored_sessions = self.store.load()
        if self.relay is not None:
            # Shared sessions: each is held and read from Redis; a cut answer is closed
            # by whichever process takes the session's lease (leases.py).
            for stored in stored_sessions:
                self.relay.discover(stored.id)
            return len(stored_sessions)
        for stored in stored_sessions:
            session = self.sessions.restore(
                stored.id,
                self.scheduler.now(),
                stored.settings,
                stored.events,
                stored.last_seq,
                stored.receipts,
            )
            recovery = recover(session.log.retained)
            if recovery.cut_answer is not None:
                self.log.warning(
                    "chatbridge: session %s: closing answer %s, cut short by the restart",
                    session.id,
                    recovery.cut_answer,
                )
            for event_type, fields in recovery.append:
                self.fanout.publish(session, event_type, fields)
            session.pending.extend(recovery.requeue)
            # Answers go in seq order: every message before the first requeued one was answered.
            session.last_answered = (
                recovery.requeue[0].seq - 1 if recovery.requeue else session.log.last_seq
            )
        self.fanout.show_restored()
        if len(self.sessions) > self.limits.max_sessions:
            self.log.warning(
                "chatbridge: restored %d sessions, over max_sessions (%d); "
                "none is dropped, new ones are refused until some are deleted",
                len(self.sessions),
                self.limits.max_sessions,
            )
        return len(stored_sessions)

    def start_restored_runs(self) -> None:
        """Show a restore's closing events and start answering what restored sessions
        had queued (needs a running loop)."""
        self.fanout.start()
        if self.relay is not None:
            self.relay.start()
        self.runner.start_waiting(self.sessions)

    async def shutdown(self) -> None:
        """Stop every agent run and end every stream and socket."""
        self.metrics.untrack(self)
        await self.runner.stop()
        if self.relay is not None:
            await self.relay.stop()
        await self.fanout.stop()
        self.fanout.end_all(CloseCode.GOING_AWAY, "server stopping")
        await self.runner.close_agents(self.sessions)
