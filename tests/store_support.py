"""What the store tests share (their `make_store` and `store` fixtures are in conftest)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from jupyter_chatbridge.server.state import LoggedEvent
from jupyter_chatbridge.server.store import SessionStore, StoredSession


def event(session_id: str, seq: int, event_type: str = "block_delta", **fields: Any) -> LoggedEvent:
    body = {"type": event_type, "sessionId": session_id, "seq": seq, **fields}
    return LoggedEvent(seq, event_type, json.dumps(body))


def by_id(stored: list[StoredSession]) -> dict[str, StoredSession]:
    return {s.id: s for s in stored}


StoreFactory = Callable[[], SessionStore]
