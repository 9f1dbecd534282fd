"""The connection registry: identities that outlive their transports.

A stable connection (a client's cid) survives its stream closing: it turns
inactive and expires only if no stream comes back within the TTL. A
server-assigned (`conn-`) connection has no way back, so it is dropped at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from ...clock import Scheduler, TimerHandle
from ...protocol import new_conn_id
from .replay import ReplayBuffer


class CidOwnedElsewhere(Exception):
    """A cid that another identity registered was presented; the caller must refuse it."""


@dataclass(eq=False)
class Connection:
    """One client's server-side state, independent of any transport."""

    id: str
    stable: bool
    owner: str
    replay: ReplayBuffer
    last_frame_id: int = 0
    active: bool = True
    inactive_since: float | None = None
    catchup: dict[str, int] | None = None
    """Sessions whose history this connection is still being sent: session id -> the
    last seq sent. Written in pieces as the client reads (`Fanout.drain`); live events
    of those sessions wait in the log until their cursor reaches them. None when empty
    (most connections, most of the time: an idle connection should cost little)."""
    _expiry: TimerHandle | None = field(default=None, repr=False)

    def next_frame_id(self) -> int:
        """Allocate the id of the next frame sent to this connection."""
        self.last_frame_id += 1
        return self.last_frame_id


class OpenResult(NamedTuple):
    """The outcome of opening a stream: the connection and whether its state was kept."""

    connection: Connection
    resumed: bool


class ConnectionRegistry:
    """All connections, active and inactive, with TTL-deferred expiry.

    `on_expired` is called with a connection after it has been removed, so the
    owner of session state can release what that connection still holds.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        *,
        inactive_ttl: float,
        replay_buffer_size: int,
        on_expired: Callable[[Connection], None],
    ) -> None:
        self._scheduler = scheduler
        self._ttl = inactive_ttl
        self._replay_size = replay_buffer_size
        self._on_expired = on_expired
        self._connections: dict[str, Connection] = {}

    def __len__(self) -> int:
        return len(self._connections)

    def __iter__(self) -> Iterator[Connection]:
        return iter(list(self._connections.values()))

    def get(self, connection_id: str) -> Connection | None:
        """The connection with this id, active or inactive, or None."""
        return self._connections.get(connection_id)

    def count_owned_by(self, owner: str) -> int:
        """How many connections one identity holds (for the per-user limit)."""
        return sum(1 for c in self._connections.values() if c.owner == owner)

    def open(self, cid: str | None, owner: str) -> OpenResult:
        """Register or reactivate the connection a new stream belongs to.

        `cid` must already be normalised. A known cid keeps its state and any
        pending expiry is cancelled; an unknown one is registered under that
        same id. Without a cid a fresh `conn-` id is assigned.
        """
        if cid is not None:
            existing = self._connections.get(cid)
            if existing is not None:
                if existing.owner != owner:
                    raise CidOwnedElsewhere(cid)
                self._reactivate(existing)
                return OpenResult(existing, True)
        connection = Connection(
            id=cid if cid is not None else new_conn_id(),
            stable=cid is not None,
            owner=owner,
            replay=ReplayBuffer(self._replay_size),
        )
        self._connections[connection.id] = connection
        return OpenResult(connection, False)

    def deactivate(self, connection_id: str) -> None:
        """The connection's stream is gone: start its TTL, or drop it if it is not stable.

        Callers must only call this for the connection's *current* stream (see
        `StreamRegistry.remove_if_current`); a second call while inactive keeps
        the first deadline rather than extending it.
        """
        connection = self._connections.get(connection_id)
        if connection is None or not connection.active:
            return
        connection.active = False
        connection.inactive_since = self._scheduler.now()
        if not connection.stable:
            self._expire(connection)
            return
        connection._expiry = self._scheduler.call_later(
            self._ttl, lambda: self._expire_if_still_inactive(connection)
        )

    def expire_all(self) -> None:
        """Drop every connection now (server shutdown)."""
        for connection in list(self._connections.values()):
            self._cancel_expiry(connection)
            self._expire(connection)

    def _reactivate(self, connection: Connection) -> None:
        self._cancel_expiry(connection)
        connection.active = True
        connection.inactive_since = None

    def _expire_if_still_inactive(self, connection: Connection) -> None:
        # Belt and braces: the timer is cancelled on reactivation, but a timer
        # that fires anyway must not expire a connection that came back, nor a
        # newer registration under the same id.
        if connection.active or self._connections.get(connection.id) is not connection:
            return
        connection._expiry = None
        self._expire(connection)

    def _expire(self, connection: Connection) -> None:
        if self._connections.get(connection.id) is connection:
            del self._connections[connection.id]
            self._on_expired(connection)

    @staticmethod
    def _cancel_expiry(connection: Connection) -> None:
        if connection._expiry is not None:
            connection._expiry.cancel()
            connection._expiry = None
