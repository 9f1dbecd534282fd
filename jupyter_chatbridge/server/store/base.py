"""The durable record of sessions: what every store keeps, and the errors it raises.

`ChatBridge` keeps everything it serves in memory (fan-out and history never
read the store). The store is written as events happen, fed by the sessions'
event logs (it is their one sink), and read once, at start-up, to restore what a
previous server process had: sessions, their retained events with their seq, the
send receipts (dedup across restarts) and each session's agent settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from ..state import LoggedEvent, SendReceipt

MEMORY = ":memory:"
"""The `store_path` that selects `MemoryStore` (nothing survives the process)."""


class StoreError(Exception):
    """The store cannot be opened or written; the message names the file and the way out."""


@dataclass
class StoredSession:
    """One session as the store holds it: what a restart restores."""

    id: str
    created: float
    settings: dict[str, Any]
    events: list[LoggedEvent] = field(default_factory=list)
    """The retained tail of the session's events, oldest first, contiguous in seq."""
    last_seq: int = 0
    receipts: list[SendReceipt] = field(default_factory=list)
    """Remembered send receipts, oldest (lowest seq) first."""


class SessionStore(Protocol):
    """What `ChatBridge` needs from a durable record of its sessions.

    Writes are fire-and-forget and applied in the order they were made; `flush`
    is the barrier that says they are durable. `trim` never removes a session's
    newest event, so `last_seq` survives any trim.
    """

    description: str
    """Where the data lives, for log messages."""

    @property
    def closed(self) -> bool:
        """True once `close` was called: nothing more will ever be committed."""
        ...

    commits_immediately: bool
    """True when a write is as durable as it will ever be once it is made (memory):
    events are then shown at once, without waiting for a `flush`."""

    def load(self) -> list[StoredSession]:
        """Every stored session, in creation order (called once, at start-up)."""
        ...

    def create_session(self, session_id: str, created: float, settings: dict[str, Any]) -> None:
        """Record a new, empty session (replacing any leftover rows of that id)."""
        ...

    def delete_session(self, session_id: str) -> None:
        """Remove the session and every row that belongs to it."""
        ...

    def append(self, session_id: str, event: LoggedEvent) -> None:
        """Record one session event."""
        ...

    def remember(self, receipt: SendReceipt) -> None:
        """Record one send receipt."""
        ...

    def trim(self, session_id: str, first_event_seq: int, first_receipt_seq: int) -> None:
        """Forget events before `first_event_seq`, receipts before `first_receipt_seq`."""
        ...

    async def flush(self, urgent: bool = False) -> None:
        """Resolve once everything submitted before this call is committed (or raise).

        `urgent`: someone is waiting for exactly this (a send for its `202`, watchers
        for a user message); a store may then commit a small batch at once rather
        than with its next group."""
        ...

    def close(self) -> None:
        """Commit what is queued and stop; idempotent."""
        ...


class StoreLocked(StoreError):
    """The store file is held by another live server process."""

    def __init__(self, path: str, pid: str) -> None:
        super().__init__(
            f"chatbridge session store {path} is in use by another running server "
            f"(pid {pid}). Stop that server, or give this one its own file with "
            "c.ChatBridgeApp.store_path."
        )
        self.path = path
        self.pid = pid
