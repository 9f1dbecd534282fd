"""Sessions, who watches them, who drives them, and the suspend flag.

The watch and drive relations are kept here in both directions (session to
connections, connection to sessions) so they can never disagree, and they are
keyed by connection id, so they survive a stable connection's reconnect.

The registry and the sessions' logs report every change of the durable record
(a session created or deleted; events, receipts, trims) to one `SessionSink`,
the store; nothing else writes to it.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from ...protocol import client_id
from .eventlog import EventLog, LoggedEvent, LogSink, NoSink, SendReceipt


class SessionSink(LogSink, Protocol):
    """A `LogSink` that also hears of sessions created and deleted (the store)."""

    def create_session(self, session_id: str, created: float, settings: dict[str, Any]) -> None:
        """A new, empty session (`created` is wall-clock time)."""

    def delete_session(self, session_id: str) -> None:
        """The session and everything of it are gone."""


class SessionExists(Exception):
    """A session with that id already exists."""


@dataclass(frozen=True)
class PendingInput:
    """A user message accepted for the agent and not yet answered."""

    seq: int
    client_msg_id: str
    text: str
    connection_id: str | None


@dataclass(eq=False)
class Session:
    """One chat session: its log, watchers, driver and queued input."""

    id: str
    log: EventLog
    created: float
    watchers: set[str] = field(default_factory=set)
    driver: str | None = None
    suspended: bool = False
    running: bool = False
    pending: deque[PendingInput] = field(default_factory=deque)
    agent: Any = None
    settings: dict[str, Any] = field(default_factory=dict)
    """The agent settings given at creation (kept by the store, handed to the agent)."""
    last_answered: int = 0
    """The seq of the newest user message an answer was started for (0: none)."""

    @property
    def driver_client_id(self) -> str | None:
        """The ownership key `<connectionId>:<sessionId>` of the driver, if any."""
        return client_id(self.driver, self.id) if self.driver else None

    def describe(self, *, with_settings: bool = False) -> dict[str, Any]:
        """The session as the REST API answers it; `GET sessions/{id}` adds its settings."""
        described = {
            "sessionId": self.id,
            "lastSeq": self.log.shown_seq,
            # Until its last events are shown, an answer is still running to any reader.
            "running": self.running or self.log.shown_seq < self.log.last_seq,
            "driver": self.driver_client_id,
        }
        if with_settings:
            described["settings"] = self.settings
        return described


class SessionRegistry:
    """All sessions, plus the watch and drive indexes by connection id."""

    def __init__(
        self,
        *,
        max_events: int,
        max_receipts: int,
        sink: SessionSink | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._sessions: dict[str, Session] = {}
        self._watching: dict[str, set[str]] = {}
        self._driving: dict[str, set[str]] = {}
        self._max_events = max_events
        self._max_receipts = max_receipts
        self._sink: SessionSink = sink if sink is not None else NoSink()
        # The sink's creation time: the scheduler's clock means nothing to the next process.
        self._wall_clock = wall_clock

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._sessions.values()))

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._sessions

    def get(self, session_id: str) -> Session | None:
        """The session with this id, or None."""
        return self._sessions.get(session_id)

    def create(
        self, session_id: str, now: float, settings: dict[str, Any] | None = None
    ) -> Session:
        """Add a new, empty session."""
        session = self._add(session_id, now, settings)
        self._sink.create_session(session_id, self._wall_clock(), session.settings)
        return session

    def restore(
        self,
        session_id: str,
        now: float,
        settings: dict[str, Any],
        events: Iterable[LoggedEvent],
        last_seq: int,
        receipts: Iterable[SendReceipt],
    ) -> Session:
        """Add a session the sink already holds (a restart), with its log as kept."""
        session = self._add(session_id, now, settings)
        session.log.load(events, last_seq, receipts)
        return session

    def _add(self, session_id: str, now: float, settings: dict[str, Any] | None) -> Session:
        if session_id in self._sessions:
            raise SessionExists(session_id)
        log = EventLog(
            session_id,
            max_events=self._max_events,
            max_receipts=self._max_receipts,
            sink=self._sink,
        )
        session = Session(id=session_id, log=log, created=now, settings=dict(settings or {}))
        self._sessions[session_id] = session
        return session

    def delete(self, session_id: str, *, durable: bool = True) -> Session | None:
        """Remove a session and every relation to it; returns it for the caller to notify.

        `durable=False` leaves the sink alone (a shared store deleted it already).
        """
        session = self._sessions.pop(session_id, None)
        if session is None:
            return None
        if durable:
            self._sink.delete_session(session_id)
        for connection_id in session.watchers:
            self._discard(self._watching, connection_id, session_id)
        if session.driver is not None:
            self._discard(self._driving, session.driver, session_id)
        return session

    # -- watching ---------------------------------------------------------------

    def watch(self, session: Session, connection_id: str) -> None:
        """`connection_id` receives the session's events from now on."""
        session.watchers.add(connection_id)
        self._watching.setdefault(connection_id, set()).add(session.id)

    def unwatch(self, session: Session, connection_id: str) -> None:
        """Stop delivering the session's events to `connection_id`."""
        session.watchers.discard(connection_id)
        self._discard(self._watching, connection_id, session.id)

    def watched_by(self, connection_id: str) -> frozenset[str]:
        """Ids of the sessions a connection watches."""
        return frozenset(self._watching.get(connection_id, ()))

    # -- driving ----------------------------------------------------------------

    def attach(self, session: Session, connection_id: str) -> str | None:
        """Make `connection_id` the driver; returns the previous driver it took over from."""
        previous = session.driver
        if previous == connection_id:
            return None
        if previous is not None:
            self._discard(self._driving, previous, session.id)
        session.driver = connection_id
        session.suspended = False
        self._driving.setdefault(connection_id, set()).add(session.id)
        return previous

    def detach(self, session: Session, connection_id: str) -> bool:
        """Stop `connection_id` driving the session; False (and nothing changes) if it doesn't."""
        if session.driver != connection_id:
            return False
        session.driver = None
        session.suspended = False
        self._discard(self._driving, connection_id, session.id)
        return True

    def suspend(self, session: Session, connection_id: str) -> bool:
        """Keep the driver through its expiry; only the driver itself may ask. True if it did."""
        if session.driver != connection_id:
            return False
        session.suspended = True
        return True

    def driven_by(self, connection_id: str) -> frozenset[str]:
        """Ids of the sessions a connection drives."""
        return frozenset(self._driving.get(connection_id, ()))

    def release_connection(self, connection_id: str) -> list[Session]:
        """An expired connection lets go: it stops watching everything, and every session
        it still drives is detached unless suspended. Returns the sessions detached.

        Sessions another connection took over are no longer in this connection's
        drive index, so an expiry can never undo a take-over.
        """
        for session_id in self._watching.pop(connection_id, set()):
            session = self._sessions.get(session_id)
            if session is not None:
                session.watchers.discard(connection_id)
        detached = []
        for session_id in sorted(self._driving.get(connection_id, set())):
            session = self._sessions.get(session_id)
            if session is None or session.driver != connection_id or session.suspended:
                continue
            self.detach(session, connection_id)
            detached.append(session)
        return detached

    @staticmethod
    def _discard(index: dict[str, set[str]], key: str, value: str) -> None:
        members = index.get(key)
        if members is not None:
            members.discard(value)
            if not members:
                del index[key]
