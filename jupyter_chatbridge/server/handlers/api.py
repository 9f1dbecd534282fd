"""REST handlers: sessions, history, watch/attach/suspend, send."""

from __future__ import annotations

from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web

from ...protocol import ErrorCode, is_valid_client_msg_id, is_valid_session_id
from ...testing import Fault
from ..bridge import BridgeError
from .base import ChatBridgeHandler, bad_request, canonical_connection_id

MAX_HISTORY_PAGE = 10000


def _session_id_from_path(session_id: str) -> str:
    if not is_valid_session_id(session_id):
        raise bad_request("not a valid session id")
    return session_id


def _optional_non_negative_int(value: Any, name: str) -> int | None:
    if value is None:
        return None
    # bool is an int in Python but never a valid seq on the wire.
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise bad_request(f"{name} must be a non-negative integer")
    return value


def _query_int(handler: ChatBridgeHandler, name: str, default: int | None) -> int | None:
    raw = handler.get_query_argument(name, None)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise bad_request(f"{name} must be a non-negative integer")
    return int(raw)


class SessionsHandler(ChatBridgeHandler):
    """`GET/POST chatbridge/api/sessions`."""

    @web.authenticated
    @authorized
    def get(self) -> None:
        self.write_json(200, {"sessions": [s.describe() for s in self.bridge.sessions]})

    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.json_body()
        session_id = body.get("sessionId")
        if session_id is not None and not is_valid_session_id(session_id):
            raise bad_request("sessionId must match ^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
        # Optional agent settings: a JSON object, bounded (the bridge checks it).
        session = self.bridge.create_session(session_id, body.get("settings"))
        await self.bridge.commit()  # a 201 means the session survives a restart
        self.log.info("chatbridge: session %s created", session.id)
        self.write_json(201, session.describe())


class SessionHandler(ChatBridgeHandler):
    """`GET/DELETE chatbridge/api/sessions/{id}`."""

    @web.authenticated
    @authorized
    def get(self, session_id: str) -> None:
        session = self.bridge.session(_session_id_from_path(session_id))
        self.write_json(200, session.describe(with_settings=True))

    @web.authenticated
    @authorized
    async def delete(self, session_id: str) -> None:
        self.bridge.delete_session(_session_id_from_path(session_id))
        await self.bridge.commit()  # a 204 means it stays deleted after a restart
        self.log.info("chatbridge: session %s deleted", session_id)
        self.set_status(204)
        self.finish()


class SessionHistoryHandler(ChatBridgeHandler):
    """`GET chatbridge/api/sessions/{id}/events?after=N&limit=M`."""

    @web.authenticated
    @authorized
    def get(self, session_id: str) -> None:
        after = _query_int(self, "after", 0) or 0
        limit = _query_int(self, "limit", MAX_HISTORY_PAGE)
        if limit is None or not 1 <= limit <= MAX_HISTORY_PAGE:
            raise bad_request(f"limit must be between 1 and {MAX_HISTORY_PAGE}")
        events, last_seq = self.bridge.history(_session_id_from_path(session_id), after, limit)
        # The events are already JSON: join them instead of parsing and re-encoding.
        self.set_status(200)
        self.finish('{"events":[' + ",".join(e.data for e in events) + f'],"lastSeq":{last_seq}}}')


class ConnectionActionHandler(ChatBridgeHandler):
    """`POST chatbridge/api/{watch,unwatch,attach,detach,suspend}`: act for one connection."""

    @web.authenticated
    @authorized
    def post(self, action: str) -> None:
        # sendBeacon cannot set headers, so suspend also takes the id as a query parameter.
        connection_id = self.connection_id_header()
        if connection_id is None and action == "suspend":
            connection_id = canonical_connection_id(self.get_query_argument("connectionId", None))
        body = self.json_body()
        session_id = self.body_session_id(body)
        connection = self.bridge.connection_for(connection_id, self.owner)
        if action == "watch":
            after_seq = _optional_non_negative_int(body.get("afterSeq"), "afterSeq")
            last_seq = self.bridge.watch(connection, session_id, after_seq)
            self.write_json(200, {"sessionId": session_id, "lastSeq": last_seq})
        elif action == "unwatch":
            self.bridge.unwatch(connection, session_id)
            self.write_json(200, {"sessionId": session_id})
        elif action == "attach":
            client_id = self.bridge.attach(connection, session_id)
            self.write_json(200, {"sessionId": session_id, "clientId": client_id})
        elif action == "detach":
            self.bridge.detach(connection, session_id)
            self.write_json(200, {"sessionId": session_id})
        else:
            self.bridge.suspend(connection, session_id)
            self.set_status(204)
            self.finish()


class SendHandler(ChatBridgeHandler):
    """`POST chatbridge/api/send`: idempotent per (sessionId, clientMsgId)."""

    @web.authenticated
    @authorized
    async def post(self) -> None:
        limit = self.bridge.limits.max_message_bytes
        # JSON escapes can take six bytes per character; anything beyond that is
        # over the limit whatever it decodes to, so don't parse it.
        if len(self.request.body) > 6 * limit + 4096:
            raise BridgeError(413, ErrorCode.TOO_LARGE, f"message text is over {limit} bytes")
        body = self.json_body()
        session_id = self.body_session_id(body)
        client_msg_id = body.get("clientMsgId")
        if not is_valid_client_msg_id(client_msg_id):
            raise bad_request("clientMsgId must be 1 to 128 printable ASCII characters")
        text = body.get("text")
        if not isinstance(text, str) or not text:
            raise bad_request("text must be a non-empty string")
        fault = self._take_fault()
        if fault is not None and fault.kind != "drop_after":
            self._inject(fault)
            return
        result = self.bridge.send(
            session_id, client_msg_id, text, self.connection_id_header(), self.owner
        )
        # "Accepted" means durable: wait for the group commit (a duplicate too, since
        # its first answer may have been a 503 whose write is still being retried).
        await self.bridge.commit()
        if fault is not None:
            self._inject(fault)
            return
        self.write_json(200 if result.duplicate else 202, result.body())

    # Test seam: see jupyter_chatbridge.testing. Inert unless a FaultPlan is installed.
    def _take_fault(self) -> Fault | None:
        plan = self.settings.get("chatbridge_faults")
        fault = plan.take("send") if plan is not None else None
        return fault if fault is not None and fault.kind != "none" else None

    def _inject(self, fault: Fault) -> None:
        if fault.kind == "status":
            if fault.status_code >= 500:
                self.send_error(fault.status_code)
                return
            code = ErrorCode.BUSY if fault.status_code == 429 else ErrorCode.BAD_REQUEST
            message = f"injected fault: HTTP {fault.status_code}"
            error = BridgeError(fault.status_code, code, message, retry_after=fault.retry_after)
            self.send_error(fault.status_code, exc_info=(BridgeError, error, None))
            return
        self.request.connection.stream.close()  # type: ignore[attr-defined]
