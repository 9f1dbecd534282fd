"""`GET chatbridge/api/sessions/{id}/ws`: one session over a WebSocket, with the
session-unknown fast path.

A browser cannot read the HTTP status of a failed upgrade (it only sees 1006),
so for a request with an `Origin` header (a browser) an unknown session is
upgraded and closed at once with 4404. Scripts send no `Origin` and get a plain
HTTP 404, which their libraries do report.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from jupyter_core.utils import ensure_async
from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.base.websocket import WebSocketMixin
from tornado import web
from tornado.iostream import StreamClosedError
from tornado.websocket import WebSocketClosedError, WebSocketHandler

from ...protocol import CloseCode, ErrorCode, dumps, is_valid_client_msg_id, is_valid_session_id
from ...protocol.requests import InvalidRequest, parse_json_object, parse_send, parse_stop
from ..errors import BridgeError, bad_request, session_unknown
from ..state import LoggedEvent, Session
from .base import WRITE_AHEAD_BYTES, BridgeHandlerMixin

# History after `afterSeq` is read from the log this many events at a time.
HISTORY_PIECE_EVENTS = 256

# Catch-up tasks, referenced until done (the loop keeps only weak references).
_background: set[asyncio.Task[None]] = set()


class SessionSocketHandler(BridgeHandlerMixin, WebSocketMixin, WebSocketHandler, JupyterHandler):
    """Live events of one session, and sends acknowledged on the same socket."""

    def initialize(self) -> None:
        self._session_id = ""
        self._after_seq: int | None = None
        self._registered = False
        # While the history after `afterSeq` is being sent: the last seq sent. Live
        # events wait in the log until the catch-up reaches them.
        self._catching_up: int | None = None
        # Bytes written but not yet taken by the network: a client that stopped
        # reading makes this grow, and past the limit the socket is closed (1013).
        self._unsent_bytes = 0

    async def get(self, session_id: str) -> None:
        # Authenticate and authorize as Jupyter's own sockets do: refusals stay HTTP errors.
        user = self.current_user
        if not user:
            raise web.HTTPError(403, "authentication required")
        if not await ensure_async(
            self.authorizer.is_authorized(self, user, "execute", self.auth_resource)
        ):
            raise web.HTTPError(403, "not authorized")
        if not is_valid_session_id(session_id):
            raise bad_request("not a valid session id")
        raw_after = self.get_query_argument("afterSeq", None)
        if raw_after is not None:
            if not (raw_after.isascii() and raw_after.isdigit()) or len(raw_after) > 18:
                raise bad_request("afterSeq must be a non-negative integer")
            self._after_seq = int(raw_after)
        self._session_id = session_id
        if session_id not in self.bridge.sessions and self.request.headers.get("Origin") is None:
            # A script: answer before any upgrade.
            raise session_unknown(session_id)
        if self._after_seq and session_id in self.bridge.sessions:
            await self.bridge.reached(session_id, self._after_seq)
        # A browser (or a known session): upgrade; the origin check happens here.
        await ensure_async(super().get(session_id))  # type: ignore[arg-type]

    def open(self, session_id: str) -> None:
        super().open()  # WebSocketMixin: keep-alive pings
        # Tornado leaves Nagle on for WebSockets: an ack or a small event frame would
        # wait for the client's delayed ACK (~40 ms) before the next frame goes out.
        self.set_nodelay(True)
        if session_id not in self.bridge.sessions:
            self.bridge.metrics.record_session_unknown_close()
            self.close(CloseCode.SESSION_UNKNOWN, "session unknown")
            return
        self.bridge.add_socket(session_id, self, self._after_seq)
        self._registered = True

    async def on_message(self, message: str | bytes) -> None:
        # A coroutine: tornado reads the next frame only after this one is acked, in order.
        try:
            frame = parse_json_object(message, "frame")
            if frame.get("type") == "stop":
                await self._stop(parse_stop(frame))
                return
            if frame.get("type") != "send":
                client_msg_id = frame.get("clientMsgId")
                echo_id = client_msg_id if is_valid_client_msg_id(client_msg_id) else None
                raise InvalidRequest(
                    "unknown frame type; only 'send' and 'stop' are accepted", echo_id
                )
            request = parse_send(frame, self._session_id)
        except InvalidRequest as invalid:
            self.bridge.metrics.record_send_refused(ErrorCode.BAD_REQUEST.value)
            self._nack(invalid.client_msg_id, str(invalid), ErrorCode.BAD_REQUEST)
            return
        try:
            # An ack means durable, as a 202 does.
            result = await self.bridge.send_durably(
                request.session_id, request.client_msg_id, request.text, None
            )
        except BridgeError as error:
            self._nack(request.client_msg_id, error.message, error.code)
            return
        self._write(
            {
                "type": "ack",
                "clientMsgId": request.client_msg_id,
                "seq": result.receipt.seq,
                "duplicate": result.duplicate,
            }
        )

    async def _stop(self, message_id: str | None) -> None:
        """A `stop` frame: answered with a `stopped` frame (the REST answer's fields)."""
        try:
            result = await self.bridge.stop_answer(self._session_id, message_id)
        except BridgeError as error:
            self._write(
                {
                    "type": "stopped",
                    "messageId": message_id,
                    "error": error.message,
                    "code": error.code.value,
                }
            )
            return
        self._write({"type": "stopped", **result.body()})

    def on_close(self) -> None:
        if self._registered:
            self.bridge.remove_socket(self._session_id, self)
            self._registered = False
        if self.ping_callback is not None:
            self.ping_callback.stop()

    # -- SessionSocket ------------------------------------------------------------------

    def send_event(self, event: LoggedEvent) -> None:
        if self._catching_up is None:
            self._write_text(event.data)
            self.bridge.metrics.record_socket_frames(1)

    def catch_up(self, session: Session, after_seq: int) -> None:
        self._catching_up = after_seq
        task = asyncio.get_running_loop().create_task(self._send_history(session))
        _background.add(task)
        task.add_done_callback(_background.discard)

    async def _send_history(self, session: Session) -> None:
        """The shown events after `afterSeq`, a piece at a time as the client reads them."""
        after = self._catching_up
        assert after is not None
        while self.ws_connection is not None and not self.ws_connection.is_closing():
            events = session.log.shown_after(after, HISTORY_PIECE_EVENTS)
            if not events:
                break
            self.bridge.metrics.record_socket_frames(len(events))
            for event in events:
                written = self._write_text(event.data)
                after = event.seq
                if written is not None and self._unsent_bytes >= WRITE_AHEAD_BYTES:
                    with contextlib.suppress(WebSocketClosedError, StreamClosedError):
                        await written
        # Synchronous from the last read of the log: no live event falls in between.
        self._catching_up = None

    def end(self, code: int, reason: str) -> None:
        self._registered = False  # the bridge already forgot this socket
        if code == CloseCode.SESSION_UNKNOWN:
            self.bridge.metrics.record_session_unknown_close()
        self.close(code, reason)

    # -- helpers ---------------------------------------------------------------------

    def _nack(self, client_msg_id: str | None, error: str, code: ErrorCode) -> None:
        self._write(
            {"type": "nack", "clientMsgId": client_msg_id, "error": error, "code": code.value}
        )

    def _write(self, frame: dict[str, Any]) -> None:
        self._write_text(dumps(frame))

    def _write_text(self, text: str) -> asyncio.Future[None] | None:
        # A socket closing under us is not an error: on_close is on its way.
        try:
            written = self.write_message(text)
        except WebSocketClosedError:
            return None
        size = len(text)
        self._unsent_bytes += size
        if self._unsent_bytes > self.bridge.limits.max_stream_buffer_bytes:
            self.log.warning(
                "chatbridge: closing a socket of session %s: %d bytes unsent (limit %d); "
                "it can reconnect with afterSeq",
                self._session_id,
                self._unsent_bytes,
                self.bridge.limits.max_stream_buffer_bytes,
            )
            self.close(CloseCode.TRY_AGAIN_LATER, "slow consumer")
            return None

        def sent(future: asyncio.Future[None]) -> None:
            self._unsent_bytes -= size
            if not future.cancelled():
                future.exception()  # a closed socket: on_close is on its way

        written.add_done_callback(sent)
        return written
