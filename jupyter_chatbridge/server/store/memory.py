"""`MemoryStore`: the store that lives as long as the process (`store_path = ":memory:"`)."""

from __future__ import annotations

import json
import logging
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from ..state import LoggedEvent, SendReceipt
from .base import StoredSession, StoreError

log = logging.getLogger(__name__)


@dataclass
class _MemorySession:
    created: float
    settings: dict[str, Any]
    events: deque[LoggedEvent] = field(default_factory=deque)
    last_seq: int = 0
    receipts: OrderedDict[str, SendReceipt] = field(default_factory=OrderedDict)


class MemoryStore:
    """A store that lives as long as the process: the `:memory:` choice, and tests.

    It holds references to the same `LoggedEvent` objects the bridge holds, so
    its cost is a pointer per event. A new bridge built on the same instance
    restores from it, which lets restore logic be tested in one process.
    """

    description = "memory (nothing survives a restart)"
    commits_immediately = True

    def __init__(self) -> None:
        self._sessions: dict[str, _MemorySession] = {}
        self._closed = False

    def load(self) -> list[StoredSession]:
        """Every session, in creation order."""
        return [
            StoredSession(
                id=session_id,
                created=s.created,
                settings=json.loads(json.dumps(s.settings)),  # a copy, as a file would give
                events=list(s.events),
                last_seq=s.last_seq,
                receipts=sorted(s.receipts.values(), key=lambda r: r.seq),
            )
            for session_id, s in self._sessions.items()
        ]

    def _refused(self, kind: str) -> bool:
        if self._closed:
            log.warning("chatbridge: session store closed; dropped a %s write", kind)
        return self._closed

    def create_session(self, session_id: str, created: float, settings: dict[str, Any]) -> None:
        """Record a new, empty session."""
        if self._refused("create"):
            return
        self._sessions.pop(session_id, None)  # re-created: it goes last, like a new row
        self._sessions[session_id] = _MemorySession(created, dict(settings))

    def delete_session(self, session_id: str) -> None:
        """Forget the session."""
        if self._refused("delete"):
            return
        self._sessions.pop(session_id, None)

    def append(self, session_id: str, event: LoggedEvent) -> None:
        """Record one event (again: nothing changes, as with SQLite's INSERT OR REPLACE)."""
        session = self._sessions.get(session_id)
        if session is not None and not self._refused("append"):
            if session.events and event.seq <= session.events[-1].seq:
                return  # a send written again after a failed commit: its seq is kept
            session.events.append(event)
            session.last_seq = max(session.last_seq, event.seq)

    def remember(self, receipt: SendReceipt) -> None:
        """Record one receipt."""
        session = self._sessions.get(receipt.session_id)
        if session is not None and not self._refused("remember"):
            session.receipts[receipt.client_msg_id] = receipt

    def trim(self, session_id: str, first_event_seq: int, first_receipt_seq: int) -> None:
        """Forget old events (never the newest) and old receipts."""
        session = self._sessions.get(session_id)
        if session is None or self._refused("trim"):
            return
        events = session.events
        while len(events) > 1 and events[0].seq < first_event_seq:
            events.popleft()
        stale = [k for k, r in session.receipts.items() if r.seq < first_receipt_seq]
        for key in stale:
            del session.receipts[key]

    async def flush(self, urgent: bool = False) -> None:
        """Everything is applied at once: nothing to wait for."""
        if self._closed:
            raise StoreError("the session store is closed")

    @property
    def closed(self) -> bool:
        """True once `close` was called."""
        return self._closed

    def close(self) -> None:
        """Nothing to release."""
        self._closed = True
