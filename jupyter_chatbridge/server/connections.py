"""Connections and their event streams: open with welcome and replay, close, look up.

A stream is attached to its connection (a newer one displaces the older), the
welcome and any `Last-Event-ID` replay are written before anything live, and a
REST call names the connection it acts for, which must be the caller's own.
"""

from __future__ import annotations

import logging
from typing import Any

from ..protocol import PROTOCOL_VERSION, ErrorCode, EventType, dumps, sse_payload
from .errors import BridgeError
from .fanout import FrameSink
from .limits import BridgeLimits
from .state import CidOwnedElsewhere, Connection, ConnectionRegistry, ReplayResult, StreamRegistry


class ConnectionService:
    """Opens and closes streams, and finds the caller's connection."""

    def __init__(
        self,
        connections: ConnectionRegistry,
        streams: StreamRegistry[FrameSink],
        limits: BridgeLimits,
        epoch: str,
        log: logging.Logger | logging.LoggerAdapter[Any],
    ) -> None:
        self._connections = connections
        self._streams = streams
        self._limits = limits
        self.epoch = epoch
        self._log = log

    def open_stream(
        self, cid: str | None, owner: str, last_event_id: int | None, stream: FrameSink
    ) -> dict[str, Any]:
        """Attach a new stream to its connection, send the welcome and any replay.

        `cid` must be normalised (or None for a server-assigned id). Returns the welcome.
        """
        known = cid is not None and self._connections.get(cid) is not None
        limit = self._limits.max_connections_per_user
        if not known and self._connections.count_owned_by(owner) >= limit:
            raise BridgeError(
                429,
                ErrorCode.BUSY,
                f"too many connections for this user (limit {limit})",
                retry_after=int(self._limits.inactive_ttl) or 1,
            )
        try:
            connection, resumed = self._connections.open(cid, owner)
        except CidOwnedElsewhere:
            self._log.warning("chatbridge: refused a cid registered by another user")
            raise BridgeError(
                403, ErrorCode.FORBIDDEN, "this connection id belongs to another user"
            ) from None
        displaced = self._streams.replace(connection.id, stream)
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
            self._log.info(
                "chatbridge: %s reconnected (replayed %d frames%s)",
                connection.id,
                len(replay.frames),
                ", gap" if replay.gap else "",
            )
        return welcome

    def close_stream(self, connection_id: str, stream: FrameSink) -> None:
        """A stream ended. Only the connection's current stream may deactivate it."""
        if self._streams.remove_if_current(connection_id, stream):
            self._connections.deactivate(connection_id)

    def ping_streams(self) -> None:
        """Write its keep-alive frame to every live stream."""
        for stream in self._streams:
            stream.ping()

    def connection_for(self, connection_id: str | None, owner: str) -> Connection:
        """The caller's connection, which must exist and belong to the caller."""
        connection = self._connections.get(connection_id) if connection_id else None
        if connection is None:
            raise BridgeError(
                404,
                ErrorCode.CONNECTION_UNKNOWN,
                "unknown connection: open the event stream and use its connectionId",
            )
        if connection.owner != owner:
            raise BridgeError(403, ErrorCode.FORBIDDEN, "that connection belongs to another user")
        return connection

    def sender(self, connection_id: str | None, owner: str | None) -> str | None:
        """The connection a message is attributed to: only the caller's own, else none."""
        if connection_id is None:
            return None
        sender = self._connections.get(connection_id)
        return connection_id if sender is not None and sender.owner == owner else None
