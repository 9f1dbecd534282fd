"""Fan-out: a session event logged once, serialised once, delivered to every receiver.

Receivers are the event streams of the connections that watch the session
(each frame gets the connection's next frame id and a replay slot, even while
the connection has no stream) and the WebSockets bound to the session. The
bridge never touches a socket: streams and session sockets are handed in as the
small objects below, which the fan-out writes bytes or text to.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..protocol import EventType, dumps, sse_payload
from .state import Connection, ConnectionRegistry, LoggedEvent, Session, StreamRegistry


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


class Fanout:
    """Publishes session events to watchers' streams and session sockets."""

    def __init__(self, connections: ConnectionRegistry, streams: StreamRegistry[FrameSink]) -> None:
        self._connections = connections
        self._streams = streams
        self.sockets: dict[str, set[SessionSocket]] = {}
        """The WebSockets bound to each session, by session id."""

    def publish(self, session: Session, event_type: str, fields: dict[str, Any]) -> LoggedEvent:
        """Log a session event (the log feeds the store) and deliver it to every receiver."""
        event = session.log.append(event_type, fields)
        if session.watchers:
            payload = sse_payload(event.type, event.data)
            get = self._connections.get
            for connection_id in session.watchers:
                connection = get(connection_id)
                if connection is not None:
                    self.deliver(connection, payload)
        sockets = self.sockets.get(session.id)
        if sockets:
            for socket in sockets:
                socket.send_event(event.data)
        return event

    def replay(self, connection: Connection, events: list[LoggedEvent]) -> None:
        """Deliver logged events to one connection (a watch with `afterSeq`)."""
        for event in events:
            self.deliver(connection, sse_payload(event.type, event.data))

    def deliver(self, connection: Connection, payload: bytes) -> None:
        """One frame to one connection: an id and a replay slot, then its stream if open."""
        # Frames get an id and a replay slot even while the connection has no
        # stream, so a reconnect within the TTL replays them.
        frame_id = connection.next_frame_id()
        connection.replay.append(frame_id, payload)
        stream = self._streams.get(connection.id)
        if stream is not None:
            stream.send(frame_id, payload)

    def notify_detached(self, connection_id: str, session_id: str, reason: str) -> None:
        """Tell a connection it no longer drives a session (`detached` frame)."""
        connection = self._connections.get(connection_id)
        if connection is not None:
            data = dumps({"sessionId": session_id, "reason": reason})
            self.deliver(connection, sse_payload(EventType.DETACHED, data))

    # -- session sockets ------------------------------------------------------------------

    def add_socket(self, session: Session, socket: SessionSocket, after_seq: int | None) -> None:
        """Bind a WebSocket to a session: replay after `after_seq`, then live events."""
        if after_seq is not None:
            for event in session.log.after(after_seq):
                socket.send_event(event.data)
        self.sockets.setdefault(session.id, set()).add(socket)

    def remove_socket(self, session_id: str, socket: SessionSocket) -> None:
        """Forget a closed WebSocket."""
        sockets = self.sockets.get(session_id)
        if sockets is not None:
            sockets.discard(socket)
            if not sockets:
                del self.sockets[session_id]

    def end_sockets(self, session_id: str, code: int, reason: str) -> None:
        """Close every WebSocket of a session with an application close code."""
        for socket in self.sockets.pop(session_id, set()):
            socket.end(code, reason)

    def end_all(self, code: int, reason: str) -> None:
        """Close every stream and every session socket (the server stops)."""
        for stream in self._streams:
            stream.close()
        for session_id in list(self.sockets):
            self.end_sockets(session_id, code, reason)
