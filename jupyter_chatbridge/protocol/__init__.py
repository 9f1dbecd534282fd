"""The wire contract in code: identifiers, error and close codes, event types, SSE framing.

Everything here is pure and shared by the server and every client, so it must
never import jupyter_server or tornado.
"""

from __future__ import annotations

import json
import re
import uuid
from enum import Enum
from typing import Any, Final

PROTOCOL_VERSION: Final = 1

CID_PREFIX: Final = "cid-"
CONN_PREFIX: Final = "conn-"

# Always `fullmatch` these: with `match`, `$` also matches before a trailing newline.
_CID_RE: Final = re.compile(
    r"^cid-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE
)
_SESSION_ID_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# Printable ASCII without space: 0x21..0x7e.
_CLIENT_MSG_ID_RE: Final = re.compile(r"^[\x21-\x7e]{1,128}$")


class ErrorCode(str, Enum):
    """Machine-readable `code` of every error response."""

    BAD_REQUEST = "bad_request"
    SESSION_UNKNOWN = "session_unknown"
    CONNECTION_UNKNOWN = "connection_unknown"
    SESSION_EXISTS = "session_exists"
    TOO_LARGE = "too_large"
    BUSY = "busy"
    FORBIDDEN = "forbidden"


class CloseCode:
    """WebSocket close codes with a meaning in this protocol."""

    NORMAL: Final = 1000
    GOING_AWAY: Final = 1001
    ABNORMAL: Final = 1006
    TRY_AGAIN_LATER: Final = 1013
    """The client stopped reading (its outbound buffer is full): reconnect with afterSeq."""
    SESSION_UNKNOWN: Final = 4404
    BAD_REQUEST: Final = 4400
    UNAUTHORIZED: Final = 4401
    FORBIDDEN: Final = 4403


class EventType:
    """Session event types (they carry `seq`) and connection-level frame types (they don't)."""

    USER_MESSAGE: Final = "user_message"
    MESSAGE_START: Final = "message_start"
    BLOCK_DELTA: Final = "block_delta"
    MESSAGE_END: Final = "message_end"
    ERROR: Final = "error"
    SESSION_ENDED: Final = "session_ended"
    # connection-level
    WELCOME: Final = "welcome"
    DETACHED: Final = "detached"


SESSION_EVENT_TYPES: Final = frozenset(
    {
        EventType.USER_MESSAGE,
        EventType.MESSAGE_START,
        EventType.BLOCK_DELTA,
        EventType.MESSAGE_END,
        EventType.ERROR,
        EventType.SESSION_ENDED,
    }
)


class DetachReason:
    """Why a connection stopped driving a session (`detached` frame)."""

    TAKEN_OVER: Final = "taken_over"
    EXPIRED: Final = "expired"
    SESSION_ENDED: Final = "session_ended"


def normalize_cid(value: str) -> str | None:
    """Return the canonical (lower-case) cid, or None if `value` is not a valid cid."""
    if not _CID_RE.fullmatch(value):
        return None
    return value.lower()


def new_cid() -> str:
    """Make a fresh stable client connection id."""
    return CID_PREFIX + str(uuid.uuid4())


def cid_from_hex(hex32: str) -> str:
    """Format 32 hex digits (e.g. an ipywidgets comm id) as a cid."""
    return CID_PREFIX + str(uuid.UUID(hex=hex32))


def new_conn_id() -> str:
    """Make a server-assigned connection id; it can never match the cid pattern."""
    return CONN_PREFIX + uuid.uuid4().hex


def is_valid_session_id(value: object) -> bool:
    """True if `value` is a session id as the contract defines it."""
    return isinstance(value, str) and _SESSION_ID_RE.fullmatch(value) is not None


def is_valid_client_msg_id(value: object) -> bool:
    """True if `value` is a clientMsgId: 1 to 128 printable ASCII characters, no whitespace."""
    return isinstance(value, str) and _CLIENT_MSG_ID_RE.fullmatch(value) is not None


def client_id(connection_id: str, session_id: str) -> str:
    """The ownership key of a driver: `<connectionId>:<sessionId>`."""
    return f"{connection_id}:{session_id}"


def dumps(obj: Any) -> str:
    """Compact one-line JSON, as every frame and body uses."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def sse_payload(event: str, data: str) -> bytes:
    """The part of an SSE frame shared by every receiver: `event:` and `data:` lines.

    `data` must be one-line JSON (`dumps` never emits a newline). The `id:` line,
    which differs per connection, is written in front of it by `sse_id_line`.
    """
    return f"event: {event}\ndata: {data}\n\n".encode()


def sse_id_line(frame_id: int) -> bytes:
    """The `id:` line that precedes a frame's payload."""
    return b"id: %d\n" % frame_id


SSE_PING: Final = b": ping\n\n"

SSE_PING_EVENT: Final = b"event: ping\ndata: {}\n\n"
"""The keep-alive of a stream opened with `heartbeat=event`: an event without an id, which
an EventSource can see (it hides comments), so a browser can tell a silent stream."""
