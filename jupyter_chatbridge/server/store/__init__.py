"""The durable session store: `SessionStore` (base), `MemoryStore`, `SqliteStore`, `RedisStore`.

`base` holds the protocol every store keeps and its errors; `memory` the
in-process store; `barrier` what a flush awaits; `sqlite` the file store
(`sqlite_schema` its tables, `sqlite_commit` how it commits: in groups on a
writer thread, urgent batches on the loop); `lock` the one-server-per-file lock;
`redis` the store many server processes share (`redis_scripts` its atomic
writes, `redis_keys` its key names).
"""

from __future__ import annotations

from pathlib import Path

from ..metrics import NO_METRICS, BridgeMetrics
from .base import MEMORY, SessionStore, StoredSession, StoreError, StoreLocked
from .memory import MemoryStore
from .sqlite import SqliteStore
from .sqlite_commit import GROUP_COMMIT_WINDOW, MAX_BACKLOG
from .sqlite_schema import SCHEMA_VERSION

__all__ = [
    "GROUP_COMMIT_WINDOW",
    "MAX_BACKLOG",
    "MEMORY",
    "SCHEMA_VERSION",
    "MemoryStore",
    "SessionStore",
    "SqliteStore",
    "StoreError",
    "StoreLocked",
    "StoredSession",
    "open_store",
]


def open_store(
    path: str | Path,
    url: str = "",
    max_events: int = 10_000,
    metrics: BridgeMetrics = NO_METRICS,
) -> SessionStore:
    """The store for `c.ChatBridgeApp.store_url` (a Redis URL) if set, else for
    `store_path`: `":memory:"` or a SQLite file (which reports its commits to
    `metrics`)."""
    if url:
        from .redis import RedisStore  # the optional extra: imported only when chosen

        return RedisStore(url, max_events=max_events)
    if str(path) == MEMORY:
        return MemoryStore()
    return SqliteStore(path, metrics)
