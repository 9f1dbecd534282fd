"""Read a session store file from outside the server, safely while a server runs.

This depends only on the store's table layout (schema version 1) and its lock
file, not on the server's store code: it opens the file read-only through SQLite (WAL readers never
block the server's writer, and the server never waits for us) and reads each
answer inside one transaction, so it sees one consistent snapshot.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ...protocol.export import conversation, ending
from ..store.lock import lock_path_for, read_holder

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: the store keeps no lock file there
    fcntl = None  # type: ignore[assignment]

SCHEMA_VERSION: Final = 1
"""The layout this module reads (the store's `meta.schema_version`)."""

TABLES: Final = {
    "meta": ("key", "value"),
    "sessions": ("id", "created", "settings"),
    "events": ("session_id", "seq", "type", "data"),
    "receipts": ("session_id", "client_msg_id", "seq"),
}


class StoreFileError(Exception):
    """The file cannot be read as a session store; the message says why, in one line."""


@dataclass(frozen=True)
class SessionSummary:
    """One row of `jupyter chatbridge sessions`."""

    id: str
    created: float
    events: int
    """Events the store retains (older ones may have been trimmed)."""
    first_seq: int
    last_seq: int
    last_type: str
    running: bool
    """An answer is open: its `message_start` has no `message_end` yet."""


def lock_holder(store: Path) -> str | None:
    """The pid (as the lock file says) of the live process holding the store, or None.

    The lock is the server's own (`store.lock`: where it lives, what it holds). This
    only probes it: the lock file is opened read-only and never created, and a lock
    taken for the probe is released at once.
    """
    if fcntl is None:  # pragma: no cover
        return None
    path = lock_path_for(store)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return read_holder(path)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class StoreFile:
    """A read-only view of one store file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.exists():
            raise StoreFileError(f"no session store at {path}")
        if not path.is_file():
            raise StoreFileError(f"{path} is not a file")

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read-only connection inside one read transaction."""
        # SQLite's read-only mode still creates the -wal and -shm companions of a WAL file.
        # When no server holds the store and no WAL is left to read, nothing can change
        # under us: read the file as immutable, which creates nothing beside it.
        wal = self.path.with_name(self.path.name + "-wal")
        quiet = lock_holder(self.path) is None and not wal.exists()
        query = "mode=ro&immutable=1" if quiet else "mode=ro"
        try:
            conn = sqlite3.connect(
                f"{self.path.resolve().as_uri()}?{query}", uri=True, isolation_level=None
            )
        except sqlite3.Error as exc:
            raise StoreFileError(f"cannot open {self.path}: {exc}") from exc
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
            conn.execute("BEGIN")
            yield conn
        except sqlite3.DatabaseError as exc:
            raise self.damaged(exc) from exc
        finally:
            conn.close()

    def damaged(self, cause: BaseException) -> StoreFileError:
        """The error for a file SQLite cannot read."""
        return StoreFileError(
            f"{self.path} is damaged or is not a session store ({cause}); "
            "`jupyter chatbridge check` reports what is wrong"
        )

    def verify_layout(self, conn: sqlite3.Connection) -> int:
        """The schema version, after checking the tables this module reads are there."""
        for table, columns in TABLES.items():
            found = tuple(row[1] for row in conn.execute(f"PRAGMA table_info({table})"))
            missing = [c for c in columns if c not in found]
            if missing:
                what = "table" if not found else f"columns {', '.join(missing)} of table"
                raise StoreFileError(f"{self.path} is not a session store: no {what} {table!r}")
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        version = int(row[0]) if row and str(row[0]).isdigit() else 0
        if version != SCHEMA_VERSION:
            raise StoreFileError(
                f"{self.path} has store schema {version or 'unknown'}; "
                f"this command reads schema {SCHEMA_VERSION}"
            )
        return version

    def sessions(self) -> list[SessionSummary]:
        """Every session, in creation order."""
        with self.snapshot() as conn:
            self.verify_layout(conn)
            summaries = []
            rows = conn.execute(
                "SELECT s.id, s.created, COUNT(e.seq), MIN(e.seq), MAX(e.seq) "
                "FROM sessions s LEFT JOIN events e ON e.session_id = s.id "
                "GROUP BY s.id ORDER BY s.rowid"
            ).fetchall()
            for session_id, created, count, first, last in rows:
                last_type = ""
                if last is not None:
                    last_type = conn.execute(
                        "SELECT type FROM events WHERE session_id = ? AND seq = ?",
                        (session_id, last),
                    ).fetchone()[0]
                summaries.append(
                    SessionSummary(
                        session_id,
                        created,
                        count,
                        first or 0,
                        last or 0,
                        last_type,
                        self._running(conn, session_id),
                    )
                )
            return summaries

    @staticmethod
    def _running(conn: sqlite3.Connection, session_id: str) -> bool:
        # Answers run one at a time, so only the newest one can still be open: reduce
        # the tail from its start, with the same rule every export uses.
        tail = [
            json.loads(data)
            for (data,) in conn.execute(
                "SELECT data FROM events WHERE session_id = :id AND seq >= "
                "(SELECT MAX(seq) FROM events WHERE session_id = :id AND type = 'message_start')"
                " ORDER BY seq",
                {"id": session_id},
            )
        ]
        chat = conversation(session_id, tail)
        return any(ending(m) == "running" for m in chat.messages if m.role == "agent")

    def has_session(self, session_id: str) -> bool:
        """Whether the store holds this session."""
        with self.snapshot() as conn:
            self.verify_layout(conn)
            row = conn.execute("SELECT 1 FROM sessions WHERE id = ?", (session_id,)).fetchone()
            return row is not None

    def events(self, session_id: str) -> list[dict[str, Any]]:
        """The session's retained events, in seq order; unknown session: `StoreFileError`."""
        with self.snapshot() as conn:
            self.verify_layout(conn)
            if (
                conn.execute("SELECT 1 FROM sessions WHERE id = ?", (session_id,)).fetchone()
                is None
            ):
                raise StoreFileError(f"no session {session_id!r} in {self.path}")
            try:
                return [
                    json.loads(data)
                    for (data,) in conn.execute(
                        "SELECT data FROM events WHERE session_id = ? ORDER BY seq",
                        (session_id,),
                    )
                ]
            except ValueError as exc:
                raise self.damaged(exc) from exc
