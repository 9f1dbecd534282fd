"""What the store tests share (their `make_store` and `store` fixtures are in conftest)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from jupyter_chatbridge.server.state import LoggedEvent
from jupyter_chatbridge.server.store import MemoryStore, SessionStore, SqliteStore, StoredSession
from jupyter_chatbridge.server.store.redis import RedisStore


def event(session_id: str, seq: int, event_type: str = "block_delta", **fields: Any) -> LoggedEvent:
    body = {"type": event_type, "sessionId": session_id, "seq": seq, **fields}
    return LoggedEvent(seq, event_type, json.dumps(body))


def by_id(stored: list[StoredSession]) -> dict[str, StoredSession]:
    return {s.id: s for s in stored}


StoreFactory = Callable[[], SessionStore]


def store_factory(kind: str, tmp_path: Path, redis_url: str = "") -> Iterator[StoreFactory]:
    """Yields a maker of stores of one kind over one place; closes them all after."""
    made: list[SessionStore] = []
    memory = MemoryStore()

    def make() -> SessionStore:
        store: SessionStore
        if kind == "memory":
            # "Reopening" memory: a new store over the same data, as a file would be.
            store = MemoryStore()
            store._sessions = memory._sessions
        elif kind == "redis":
            store = RedisStore(redis_url)
        else:
            store = SqliteStore(tmp_path / "data" / "sessions.sqlite3")
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()
