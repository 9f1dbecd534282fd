"""Request bodies as the contract defines them, parsed once for every transport.

`parse_send` reads a send from a REST body (`POST send`) or a WebSocket `send`
frame; anything malformed raises `InvalidRequest`, which the server answers
as `400 bad_request` (REST) or a `nack` with that code (WebSocket). Pure: no
server imports, so a client could validate with the same rules.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from . import is_valid_client_msg_id, is_valid_session_id


class InvalidRequest(ValueError):
    """A request the contract refuses (`bad_request`); the message says why.

    `client_msg_id` is the request's clientMsgId when it was valid, so a `nack`
    can name the message it refuses.
    """

    def __init__(self, message: str, client_msg_id: str | None = None) -> None:
        super().__init__(message)
        self.client_msg_id = client_msg_id


@dataclass(frozen=True)
class SendRequest:
    """A well-formed send: which session, which message id, what text."""

    session_id: str
    client_msg_id: str
    text: str


def parse_json_object(raw: str | bytes, what: str) -> dict[str, Any]:
    """`raw` as a JSON object; `what` names it in the error ("request body", "frame")."""
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):  # too deep is not JSON we take
        raise InvalidRequest(f"{what} is not valid JSON") from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"{what} must be a JSON object")
    return value


def parse_session_id(body: dict[str, Any]) -> str:
    """The mandatory `sessionId` of a body, validated."""
    session_id = body.get("sessionId")
    if not is_valid_session_id(session_id):
        raise InvalidRequest("sessionId is missing or not a valid session id")
    return str(session_id)


def parse_send(body: dict[str, Any], session_id: str | None = None) -> SendRequest:
    """A send from a JSON object; `session_id` when the transport names it (the
    WebSocket's path), else the body's `sessionId`."""
    if session_id is None:
        session_id = parse_session_id(body)
    client_msg_id = body.get("clientMsgId")
    if not is_valid_client_msg_id(client_msg_id):
        raise InvalidRequest("clientMsgId must be 1 to 128 printable ASCII characters")
    text = body.get("text")
    if not isinstance(text, str) or not text:
        raise InvalidRequest("text must be a non-empty string", client_msg_id)
    return SendRequest(session_id, str(client_msg_id), text)


def parse_stop(body: dict[str, Any]) -> str | None:
    """The `messageId` a Stop names (REST body or `stop` frame); None: the running answer."""
    message_id = body.get("messageId")
    if message_id is None:
        return None
    # An answer's id has the clientMsgId form (`m<seq>` from this server).
    if not is_valid_client_msg_id(message_id):
        raise InvalidRequest("messageId must be 1 to 128 printable ASCII characters")
    return str(message_id)
