"""`SqliteStore`: sessions in one SQLite file, committed in groups (sqlite_commit.py).

Each write is queued, never committed where it is made; `flush()` is the barrier
a caller awaits before promising durability (a `202 accepted`), and an urgent
flush commits a small batch at once. Opening, reading and the statements are here;
how and where commits happen is `GroupCommitter`'s.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..metrics import NO_METRICS, BridgeMetrics
from ..state import LoggedEvent, SendReceipt
from .base import StoredSession, StoreError
from .lock import StoreLock
from .sqlite_commit import GroupCommitter, Write
from .sqlite_schema import BULK_APPEND, SCHEMA, SCHEMA_VERSION, STATEMENTS

log = logging.getLogger(__name__)


class SqliteStore:
    """Sessions in one SQLite file: WAL, `synchronous=NORMAL`, one writer thread.

    Opening checks the file (`PRAGMA quick_check`) and that it can be written;
    any failure is a `StoreError` naming the file and what to do, so a server
    never starts empty on top of data it could not read.
    """

    def __init__(
        self,
        path: str | Path,
        metrics: BridgeMetrics = NO_METRICS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path).expanduser()
        self._metrics = metrics  # commit latency and failures, from either thread
        self.description = str(self.path)
        self.commits_immediately = False
        self._bulk = True  # JSON functions available (checked at open)
        self._resolved = self.path
        self._file_lock = StoreLock(self.path)  # keyed on the resolved path
        self._take_lock()
        try:
            self._check_and_migrate()
        except BaseException:
            self._file_lock.release()
            raise
        self._committer = GroupCommitter(
            name=f"chatbridge-store:{self.path.name}",
            describe=f"chatbridge session store {self.path}",
            # Looked up at each call, so a test can wrap them (tests/test_store_faults.py).
            connect=lambda: self._connect(),
            commit=lambda conn, writes: self._commit(conn, writes),
            metrics=metrics,
            clock=clock,
        )

    # -- opening -------------------------------------------------------------------------

    def _fail(self, problem: str, cause: BaseException) -> StoreError:
        return StoreError(
            f"chatbridge session store {self.path}: {problem} ({cause}). "
            "Move the file aside or delete it to start with no sessions, "
            "or set c.ChatBridgeApp.store_path to another file "
            '(":memory:" keeps nothing across restarts).'
        )

    def _take_lock(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._fail("cannot create its directory", exc) from exc
        # SQLite opens the resolved file too, so its -wal and -shm sit beside the target.
        self._resolved = self.path.resolve()
        try:
            self._file_lock.acquire()
        except OSError as exc:
            raise self._fail("cannot create its lock file", exc) from exc

    def _connect(self) -> sqlite3.Connection:
        # Autocommit mode: transactions are explicit (BEGIN ... COMMIT) in the writer.
        conn = sqlite3.connect(self._resolved, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 5000")
        return conn

    def _check_and_migrate(self) -> None:
        if self.path.exists() and not self.path.is_file():
            raise self._fail("is not a regular file", FileExistsError(str(self.path)))
        try:
            conn = self._connect()
        except sqlite3.Error as exc:
            raise self._fail("cannot be opened", exc) from exc
        problem = "is damaged or is not a SQLite database"
        try:
            # Read-only first: a damaged file is reported before anything writes to it.
            problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise sqlite3.DatabaseError("; ".join(map(str, problems[:3])))
            version = self._schema_version(conn)
            if version is not None and version > SCHEMA_VERSION:
                raise StoreError(
                    f"chatbridge session store {self.path}: written by a newer version "
                    f"(schema {version}, this one knows {SCHEMA_VERSION}). Upgrade "
                    "jupyter_chatbridge, or set c.ChatBridgeApp.store_path to another file."
                )
            problem = "cannot be written"
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"cannot switch to WAL mode (got {mode})")
            conn.executescript(SCHEMA)
            try:
                conn.execute("SELECT json_extract('[1]', '$[0]')")
            except sqlite3.OperationalError:  # an SQLite built without JSON: row by row
                self._bulk = False
            # A real write: proves now, not at the first send, that the file is writable.
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
        except sqlite3.DatabaseError as exc:  # not a database, malformed, I/O, read-only, full
            raise self._fail(problem, exc) from exc
        finally:
            conn.close()

    @staticmethod
    def _schema_version(conn: sqlite3.Connection) -> int | None:
        has_meta = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
        ).fetchone()
        if not has_meta:
            return None
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(row[0]) if row else None

    # -- reading -------------------------------------------------------------------------

    def load(self) -> list[StoredSession]:
        """Every stored session with its retained events and receipts, in creation order."""
        try:
            conn = self._connect()
        except sqlite3.Error as exc:
            raise self._fail("cannot be opened", exc) from exc
        try:
            sessions: dict[str, StoredSession] = {}
            for session_id, created, settings in conn.execute(
                "SELECT id, created, settings FROM sessions ORDER BY rowid"
            ):
                sessions[session_id] = StoredSession(session_id, created, json.loads(settings))
            for session_id, seq, event_type, data in conn.execute(
                "SELECT session_id, seq, type, data FROM events ORDER BY session_id, seq"
            ):
                stored = sessions.get(session_id)
                if stored is not None:
                    stored.events.append(LoggedEvent(seq, event_type, data))
                    stored.last_seq = seq
            for session_id, client_msg_id, seq in conn.execute(
                "SELECT session_id, client_msg_id, seq FROM receipts ORDER BY session_id, seq"
            ):
                stored = sessions.get(session_id)
                if stored is not None:
                    stored.receipts.append(SendReceipt(session_id, client_msg_id, seq))
            return list(sessions.values())
        except (sqlite3.DatabaseError, ValueError) as exc:
            raise self._fail("could not be read", exc) from exc
        finally:
            conn.close()

    # -- writing (on the event loop: queued, committed in groups) ----------------------------

    def create_session(self, session_id: str, created: float, settings: dict[str, Any]) -> None:
        """Queue: record a new, empty session."""
        params = {"id": session_id, "created": created, "settings": json.dumps(settings)}
        self._put(("create", params))

    def delete_session(self, session_id: str) -> None:
        """Queue: remove the session's rows."""
        self._put(("delete", {"id": session_id}))

    def append(self, session_id: str, event: LoggedEvent) -> None:
        """Queue: record one event."""
        self._put(("append", (session_id, event.seq, event.type, event.data)))

    def remember(self, receipt: SendReceipt) -> None:
        """Queue: record one receipt."""
        self._put(("remember", (receipt.session_id, receipt.client_msg_id, receipt.seq)))

    def trim(self, session_id: str, first_event_seq: int, first_receipt_seq: int) -> None:
        """Queue: forget old events (never the newest) and old receipts."""
        params = {"id": session_id, "events": first_event_seq, "receipts": first_receipt_seq}
        self._put(("trim", params))

    async def flush(self, urgent: bool = False) -> None:
        """Resolve when every write queued before this call is committed.

        `urgent`: someone waits for exactly these writes; a small batch is then
        committed at once, here on the event loop (sqlite_commit.py says why).
        Raises `StoreError` when that commit failed (the writes stay queued and
        are tried again with the next batch) or the store is closed.
        """
        await self._committer.flush(urgent)

    @property
    def closed(self) -> bool:
        """True once `close` was called."""
        return self._committer.closed

    def commit_now(self, timeout: float = 30.0) -> None:
        """Block until every write queued before this call is committed (or raise).

        For start-up only (a restore's closing events), before the event loop runs.
        """
        self._committer.commit_now(timeout)

    def close(self) -> None:
        """Commit everything queued, stop the writer thread; idempotent."""
        if self._committer.closed:
            return
        self._committer.close()
        self._file_lock.release()

    def _put(self, write: Write) -> None:
        self._committer.put(write)

    def _commit(self, conn: sqlite3.Connection, writes: Iterable[Write]) -> None:
        runs = [(kind, [p for _, p in group]) for kind, group in itertools.groupby(writes, _kind)]
        if not runs:
            return
        started = time.perf_counter()
        conn.execute("BEGIN")
        try:
            for kind, params in runs:
                if kind == "append" and self._bulk:
                    conn.execute(BULK_APPEND, (json.dumps(params),))
                    continue
                for statement in STATEMENTS[kind]:
                    conn.executemany(statement, params)
            conn.execute("COMMIT")
            self._metrics.record_commit(time.perf_counter() - started)
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise


def _kind(write: Write) -> str:
    return write[0]
