"""REST handlers: sessions, history, export, watch/attach/suspend, send."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Final

from jupyter_server.auth.decorator import authorized
from tornado import web

from ...protocol import ErrorCode, is_valid_session_id
from ...protocol.export import FORMATS, render
from ...protocol.requests import InvalidRequest, SendRequest, parse_send, parse_stop
from ..errors import BridgeError, bad_request
from ..sessions import SendResult
from .base import ChatBridgeHandler, canonical_connection_id

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


class StopHandler(ChatBridgeHandler):
    """`POST chatbridge/api/sessions/{id}/stop`: stop the running answer; idempotent."""

    @web.authenticated
    @authorized
    async def post(self, session_id: str) -> None:
        message_id = parse_stop(self.json_body())
        result = await self.bridge.stop_answer(_session_id_from_path(session_id), message_id)
        self.write_json(200, result.body())


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


# What an export is served as, and the file name's extension (`<session>.<ext>`).
EXPORT_TYPES: Final = {
    "markdown": ("text/markdown; charset=UTF-8", "md"),
    "jsonl": ("application/x-ndjson; charset=UTF-8", "jsonl"),
    "ipynb": ("application/x-ipynb+json; charset=UTF-8", "ipynb"),
}


def _export(fmt: str, session_id: str, data: list[str]) -> str:
    return render(fmt, session_id, [json.loads(event) for event in data])


class SessionExportHandler(ChatBridgeHandler):
    """`GET chatbridge/api/sessions/{id}/export?format=markdown|jsonl|ipynb`: the session
    as a file to keep, the same text `jupyter chatbridge export` and the Python client's
    `session.export()` make of its history (`protocol.export.render`)."""

    @web.authenticated
    @authorized
    async def get(self, session_id: str) -> None:
        fmt = self.get_query_argument("format", "markdown")
        if fmt not in FORMATS:
            raise bad_request(f"format must be one of {', '.join(FORMATS)}")
        session_id = _session_id_from_path(session_id)
        events, _ = self.bridge.history(session_id, 0, None)
        # A long history takes a while to render: not on the loop every stream shares.
        text = await asyncio.get_running_loop().run_in_executor(
            None, _export, fmt, session_id, [event.data for event in events]
        )
        content_type, extension = EXPORT_TYPES[fmt]
        # A session id is [A-Za-z0-9_.-]: safe in a quoted file name as it is.
        self.set_header("Content-Disposition", f'attachment; filename="{session_id}.{extension}"')
        self.finish(text.encode("utf-8"), set_content_type=content_type)


class ConnectionActionHandler(ChatBridgeHandler):
    """`POST chatbridge/api/{watch,unwatch,attach,detach,suspend}`: act for one connection."""

    @web.authenticated
    @authorized
    async def post(self, action: str) -> None:
        # sendBeacon cannot set headers, so suspend also takes the id as a query parameter.
        connection_id = self.connection_id_header()
        if connection_id is None and action == "suspend":
            connection_id = canonical_connection_id(self.get_query_argument("connectionId", None))
        body = self.json_body()
        session_id = self.body_session_id(body)
        connection = self.bridge.connection_for(connection_id, self.owner)
        if action == "watch":
            after_seq = _optional_non_negative_int(body.get("afterSeq"), "afterSeq")
            if after_seq:
                await self.bridge.reached(session_id, after_seq)
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
    """`POST chatbridge/api/send`: idempotent per (sessionId, clientMsgId).

    `post` is three steps, `send_request`, `accept` and `answer`, so that a test
    configuration can put its own handler around them (jupyter_chatbridge.testing).
    """

    @web.authenticated
    @authorized
    async def post(self) -> None:
        request = self.send_request()
        self.answer(await self.accept(request))

    def send_request(self) -> SendRequest:
        """The request's send, or a 400 / 413 before anything changes."""
        bridge = self.bridge
        limit = bridge.limits.max_message_bytes
        try:
            # JSON escapes can take six bytes per character; anything beyond that is
            # over the limit whatever it decodes to, so don't parse it.
            if len(self.request.body) > 6 * limit + 4096:
                raise BridgeError(413, ErrorCode.TOO_LARGE, f"message text is over {limit} bytes")
            return parse_send(self.json_body())
        except BridgeError as refusal:
            bridge.metrics.record_send_refused(refusal.code.value)
            raise
        except InvalidRequest:
            bridge.metrics.record_send_refused(ErrorCode.BAD_REQUEST.value)
            raise

    async def accept(self, request: SendRequest) -> SendResult:
        """Accept the message and wait until it is durable (else a 503)."""
        return await self.bridge.send_durably(
            request.session_id,
            request.client_msg_id,
            request.text,
            self.connection_id_header(),
            self.owner,
        )

    def answer(self, result: SendResult) -> None:
        """`202` for a new message, `200` for a duplicate."""
        self.write_json(200 if result.duplicate else 202, result.body())
