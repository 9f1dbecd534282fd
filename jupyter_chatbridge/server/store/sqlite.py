"""`SqliteStore`: sessions in one SQLite file, written by one thread with group commit.

It never does disk I/O on the event loop: each write is one `queue.put`, and a
single writer thread owning its own connection commits whatever has queued up
in one transaction. `flush()` is the barrier a caller awaits before promising
durability (a `202 accepted`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..metrics import NO_METRICS, BridgeMetrics
from ..state import LoggedEvent, SendReceipt
from .base import StoredSession, StoreError
from .lock import StoreLock

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    settings TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    session_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    type TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (session_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS receipts (
    session_id TEXT NOT NULL,
    client_msg_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (session_id, client_msg_id)
) WITHOUT ROWID;
"""

# One statement list per kind of write; a run of writes of one kind is one executemany.
_STATEMENTS: dict[str, tuple[str, ...]] = {
    "append": ("INSERT OR REPLACE INTO events (session_id, seq, type, data) VALUES (?, ?, ?, ?)",),
    "remember": (
        "INSERT OR REPLACE INTO receipts (session_id, client_msg_id, seq) VALUES (?, ?, ?)",
    ),
    "create": (
        "DELETE FROM events WHERE session_id = :id",
        "DELETE FROM receipts WHERE session_id = :id",
        "DELETE FROM sessions WHERE id = :id",
        "INSERT OR REPLACE INTO sessions (id, created, settings) VALUES (:id, :created, :settings)",
    ),
    "delete": (
        "DELETE FROM events WHERE session_id = :id",
        "DELETE FROM receipts WHERE session_id = :id",
        "DELETE FROM sessions WHERE id = :id",
    ),
    "trim": (
        # MIN with the newest seq: a trim never removes the newest event (last_seq lives on).
        "DELETE FROM events WHERE session_id = :id AND seq < MIN(:events,"
        " (SELECT MAX(seq) FROM events WHERE session_id = :id))",
        "DELETE FROM receipts WHERE session_id = :id AND seq < :receipts",
    ),
}

# All the events of a batch go in with one statement (one JSON array parameter),
# so the writer thread needs the GIL a handful of times per commit, not once per row:
# each GIL hand-off costs the event loop thread a context switch.
_BULK_APPEND = (
    "INSERT OR REPLACE INTO events (session_id, seq, type, data) "
    "SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), "
    "json_extract(value, '$[2]'), json_extract(value, '$[3]') FROM json_each(?)"
)

# The writer wakes at the first write and lets more gather for this long before it
# commits them together; a flush (a send waiting for its 202) or close cuts the wait
# short. Under load the writer then works, and takes the GIL, 20 times a second
# instead of once per event: bench/store_cost.py measured 5 ms and 20 ms windows at
# +17% server CPU per fan-out delivery, 50 ms at none. The price: agent events reach
# the disk up to 50 ms after they were sent to clients.
GROUP_COMMIT_WINDOW = 0.05

# Writes kept for the next attempt after a failed commit (disk full, I/O error);
# past this many the oldest are dropped, loudly.
MAX_BACKLOG = 200_000


@dataclass(frozen=True)
class _Barrier:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]


@dataclass
class _BlockingBarrier:
    """A barrier a thread waits on (start-up, before the event loop runs)."""

    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


_Write = tuple[str, Any]  # (kind, parameters)
_STOP = object()


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    # Runs on the loop; the awaiting request may have gone away (cancelled).
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


class SqliteStore:
    """Sessions in one SQLite file: WAL, `synchronous=NORMAL`, one writer thread.

    Opening checks the file (`PRAGMA quick_check`) and that it can be written;
    any failure is a `StoreError` naming the file and what to do, so a server
    never starts empty on top of data it could not read.
    """

    def __init__(self, path: str | Path, metrics: BridgeMetrics = NO_METRICS) -> None:
        self.path = Path(path).expanduser()
        self._metrics = metrics  # commit latency and failures, from the writer thread
        self.description = str(self.path)
        self.commits_immediately = False
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()  # orders close() against concurrent writes
        self._closed = False
        self._wake = threading.Event()  # set by flush and close: commit now
        self._bulk = True  # JSON functions available (checked at open)
        self._resolved = self.path
        self._file_lock = StoreLock(self.path)  # keyed on the resolved path
        self._take_lock()
        try:
            self._check_and_migrate()
        except BaseException:
            self._file_lock.release()
            raise
        self._thread = threading.Thread(
            target=self._run, name=f"chatbridge-store:{self.path.name}", daemon=True
        )
        self._thread.start()

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
            conn.executescript(_SCHEMA)
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

    # -- writing (on the event loop: one queue.put each) ------------------------------------

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

    async def flush(self) -> None:
        """Resolve when every write queued before this call is committed.

        Raises `StoreError` when that commit failed (the writes stay queued and
        are tried again with the next batch) or the store is closed.
        """
        loop = asyncio.get_running_loop()
        barrier = _Barrier(loop, loop.create_future())
        self._put(barrier)
        self._wake.set()  # someone waits: no group-commit window for this batch
        await barrier.future

    @property
    def closed(self) -> bool:
        """True once `close` was called."""
        return self._closed

    def commit_now(self, timeout: float = 30.0) -> None:
        """Block until every write queued before this call is committed (or raise).

        For start-up only (a restore's closing events), before the event loop runs.
        """
        barrier = _BlockingBarrier()
        self._put(barrier)
        self._wake.set()
        if not barrier.done.wait(timeout):
            raise StoreError(f"chatbridge session store {self.path}: commit timed out")
        if barrier.error is not None:
            raise barrier.error

    def close(self) -> None:
        """Commit everything queued, stop the writer thread; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
            self._wake.set()
        self._thread.join()
        self._file_lock.release()

    def _put(self, item: Any) -> None:
        if self._closed:
            # After shutdown nothing may be lost silently, and nothing may crash the loop.
            if isinstance(item, (_Barrier, _BlockingBarrier)):
                raise StoreError(f"chatbridge session store {self.path} is closed")
            log.warning("chatbridge: session store closed; dropped a %s write", item[0])
            return
        self._queue.put(item)

    # -- the writer thread ---------------------------------------------------------------

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        backlog: list[_Write] = []
        stopping = False
        while not stopping:
            batch = [self._queue.get()]
            if not isinstance(batch[0], (_Barrier, _BlockingBarrier)) and batch[0] is not _STOP:
                self._wake.wait(GROUP_COMMIT_WINDOW)
            self._wake.clear()
            # Group commit: everything queued by now goes in this one transaction.
            with contextlib.suppress(queue.Empty):
                while True:
                    batch.append(self._queue.get_nowait())
            writes = backlog
            barriers: list[_Barrier | _BlockingBarrier] = []
            for item in batch:
                if item is _STOP:
                    stopping = True
                elif isinstance(item, (_Barrier, _BlockingBarrier)):
                    barriers.append(item)
                else:
                    writes.append(item)
            error: StoreError | None = None
            try:
                if conn is None:
                    conn = self._connect()
                    conn.execute("PRAGMA synchronous = NORMAL")
                self._commit(conn, writes)
                backlog = []
            except (sqlite3.OperationalError, OSError) as exc:
                # Full disk, I/O error, file made read-only: may pass, so keep the writes.
                error = StoreError(
                    f"chatbridge session store {self.path}: could not save "
                    f"{len(writes)} writes ({exc}); they will be tried again. "
                    "Free disk space or check the file's permissions."
                )
                log.error("%s", error)
                self._metrics.record_commit_failure()
                if len(writes) > MAX_BACKLOG:
                    log.error(
                        "chatbridge: session store %s: dropping %d unsaved writes",
                        self.path,
                        len(writes) - MAX_BACKLOG,
                    )
                backlog = writes[-MAX_BACKLOG:]
            except BaseException as exc:
                # A write that can never succeed (a bug, a constraint, a damaged file):
                # retrying it would block every later write, so this batch is dropped,
                # loudly; every send it held is refused (503) and its receipt retracted.
                # The thread itself must live on, or every later flush would wait forever.
                error = StoreError(
                    f"chatbridge session store {self.path}: dropped {len(writes)} writes "
                    f"that cannot be saved ({type(exc).__name__}: {exc})"
                )
                log.exception("%s", error)
                self._metrics.record_commit_failure()
                backlog = []
            for barrier in barriers:
                if isinstance(barrier, _BlockingBarrier):
                    barrier.error = error
                    barrier.done.set()
                    continue
                with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                    barrier.loop.call_soon_threadsafe(_settle, barrier.future, error)
        if backlog:
            log.error(
                "chatbridge: session store %s closed with %d unsaved writes",
                self.path,
                len(backlog),
            )
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("PRAGMA optimize")
            conn.close()

    def _commit(self, conn: sqlite3.Connection, writes: Iterable[_Write]) -> None:
        runs = [(kind, [p for _, p in group]) for kind, group in itertools.groupby(writes, _kind)]
        if not runs:
            return
        started = time.perf_counter()
        conn.execute("BEGIN")
        try:
            for kind, params in runs:
                if kind == "append" and self._bulk:
                    conn.execute(_BULK_APPEND, (json.dumps(params),))
                    continue
                for statement in _STATEMENTS[kind]:
                    conn.executemany(statement, params)
            conn.execute("COMMIT")
            self._metrics.record_commit(time.perf_counter() - started)
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise


def _kind(write: _Write) -> str:
    return write[0]
