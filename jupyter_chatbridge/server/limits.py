"""Every tunable the bridge enforces, written once.

`BridgeLimits` is the one list: each field carries its type, default and help.
The bridge reads an instance of it, and `ChatBridgeApp` turns each field into a
configurable traitlet (`limit_traits`), so a default or a help text can never
differ between the two.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from traitlets import Float, Int, TraitType

_T = TypeVar("_T", int, float)


def _limit(default: _T, help: str) -> _T:
    # A dataclass field whose help text travels with it (read by `limit_traits`).
    return field(default=default, metadata={"help": help})


@dataclass
class BridgeLimits:
    """Every tunable the bridge enforces; `ChatBridgeApp` fills it from its traitlets."""

    inactive_ttl: float = _limit(
        60.0,
        "Seconds a stable connection's state is kept after its stream closes, "
        "waiting for the client to reconnect.",
    )
    replay_buffer_size: int = _limit(1000, "Frames kept per connection for Last-Event-ID resume.")
    max_message_bytes: int = _limit(65536, "Largest accepted message text, in UTF-8 bytes.")
    max_pending_inputs: int = _limit(
        100, "Messages a session may hold waiting for the agent before sends get 429."
    )
    max_session_events: int = _limit(
        10000, "Events kept per session; the oldest are trimmed from history."
    )
    max_receipts_per_session: int = _limit(
        10000, "Send receipts kept per session for clientMsgId dedup."
    )
    max_sessions: int = _limit(1000, "Sessions the server holds at once.")
    max_watches_per_connection: int = _limit(100, "Sessions one connection may watch.")
    max_connections_per_user: int = _limit(
        200, "Connections (open or waiting for reconnect) one user may hold."
    )
    max_stream_buffer_bytes: int = _limit(
        1 << 20,
        "Unsent bytes an event stream may queue for a client that stopped reading; "
        "past this the stream is dropped (the client resumes with Last-Event-ID).",
    )
    agent_lease_seconds: float = _limit(
        10.0,
        "With a Redis store (store_url): how long a process's claim on a session's agent "
        "run lasts unless renewed. When that process dies, another one closes its cut "
        "answer as interrupted and answers the queued messages within about this time.",
    )
    max_context_chars: int = _limit(
        50000,
        "Characters of earlier conversation (user messages and answers) handed to the "
        "agent with each message (`UserMessage.history`); the oldest turns are dropped first.",
    )
    busy_retry_after: int = _limit(
        1, "Seconds a refused client is told to wait (Retry-After) after a 429 or 503 busy."
    )


def limit_traits() -> dict[str, TraitType[Any, Any]]:
    """One configurable traitlet per field of `BridgeLimits`, with its default and help."""
    traits: dict[str, TraitType[Any, Any]] = {}
    for limit in fields(BridgeLimits):
        default: Any = limit.default
        kind = Float if limit.type in (float, "float") else Int
        traits[limit.name] = kind(default, help=limit.metadata["help"]).tag(config=True)
    return traits


def limits_from(config: Any) -> BridgeLimits:
    """The limits an object with one attribute per limit (the app) holds."""
    return BridgeLimits(
        **{limit.name: getattr(config, limit.name) for limit in fields(BridgeLimits)}
    )
