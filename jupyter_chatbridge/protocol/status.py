"""Where a client's connection stands, as plain values a UI can show (no I/O, no tornado)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class ConnectionStatus(str, Enum):
    """Where the event stream stands, for a status line."""

    IDLE = "idle"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    OFFLINE = "offline"  # gave up after the transient attempts
    FAILED = "failed"  # a permanent failure (auth, bad request): no retry
    CLOSED = "closed"


@dataclass(frozen=True)
class StatusChange:
    """A status transition, with what a UI needs to explain it."""

    status: ConnectionStatus
    attempt: int = 0
    max_attempts: int = 0
    retry_in: float | None = None
    error: str | None = None
    # The server's own message when it answered that it cannot serve chat at all (a store
    # held by another server, rules.server_unavailable): a UI shows it as a banner.
    unavailable: str | None = None
