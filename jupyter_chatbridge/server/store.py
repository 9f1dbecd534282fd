"""The durable record of sessions: a `SessionStore` protocol, in memory or in SQLite.

`ChatBridge` keeps everything it serves in memory (fan-out and history never
read the store). The store is written as events happen and read once, at
start-up, to restore what a previous server process had: sessions, their
retained events with their seq, the send receipts (dedup across restarts) and
each session's agent settings.

`SqliteStore` never does disk I/O on the event loop: each write is one
`queue.put`, and a single writer thread owning its own connection commits
whatever has queued up in one transaction (group commit). `flush()` is the
barrier a caller awaits before promising durability (a `202 accepted`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import queue
import sqlite3
import threading
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .state import LoggedEvent, SendReceipt

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock file, one server per file is on you
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

MEMORY = ":memory:"
"""The `store_path` that selects `MemoryStore` (nothing survives the process)."""


class StoreError(Exception):
    """The store cannot be opened or written; the message names the file and the way out."""


@dataclass
class StoredSession:
    """One session as the store holds it: what a restart restores."""

    id: str
    created: float
    settings: dict[str, Any]
    events: list[LoggedEvent] = field(default_factory=list)
    """The retained tail of the session's events, oldest first, contiguous in seq."""
    last_seq: int = 0
    receipts: list[SendReceipt] = field(default_factory=list)
    """Remembered send receipts, oldest (lowest seq) first."""


class SessionStore(Protocol):
    """What `ChatBridge` needs from a durable record of its sessions.

    Writes are fire-and-forget and applied in the order they were made; `flush`
    is the barrier that says they are durable. `trim` never removes a session's
    newest event, so `last_seq` survives any trim.
    """

    description: str
    """Where the data lives, for log messages."""

    def load(self) -> list[StoredSession]:
        """Every stored session, in creation order (called once, at start-up)."""
        ...

    def create_session(self, session_id: str, created: float, settings: dict[str, Any]) -> None:
        """Record a new, empty session (replacing any leftover rows of that id)."""
        ...

    def delete_session(self, session_id: str) -> None:
        """Remove the session and every row that belongs to it."""
        ...

    def append(self, session_id: str, event: LoggedEvent) -> None:
        """Record one session event."""
        ...

    def remember(self, receipt: SendReceipt) -> None:
        """Record one send receipt."""
        ...

    def trim(self, session_id: str, first_event_seq: int, first_receipt_seq: int) -> None:
        """Forget events before `first_event_seq`, receipts before `first_receipt_seq`."""
        ...

    async def flush(self) -> None:
        """Resolve once everything submitted before this call is committed (or raise)."""
        ...

    def close(self) -> None:
        """Commit what is queued and stop; idempotent."""
        ...


# -- in memory ---------------------------------------------------------------------------


@dataclass
class _MemorySession:
    created: float
    settings: dict[str, Any]
    events: deque[LoggedEvent] = field(default_factory=deque)
    last_seq: int = 0
    receipts: OrderedDict[str, SendReceipt] = field(default_factory=OrderedDict)


class MemoryStore:
    """A store that lives as long as the process: the `:memory:` choice, and tests.

    It holds references to the same `LoggedEvent` objects the bridge holds, so
    its cost is a pointer per event. A new bridge built on the same instance
    restores from it, which lets restore logic be tested in one process.
    """

    description = "memory (nothing survives a restart)"

    def __init__(self) -> None:
        self._sessions: dict[str, _MemorySession] = {}
        self._closed = False

    def load(self) -> list[StoredSession]:
        """Every session, in creation order."""
        return [
            StoredSession(
                id=session_id,
                created=s.created,
                settings=json.loads(json.dumps(s.settings)),  # a copy, as a file would give
                events=list(s.events),
                last_seq=s.last_seq,
                receipts=sorted(s.receipts.values(), key=lambda r: r.seq),
            )
            for session_id, s in self._sessions.items()
        ]

    def _refused(self, kind: str) -> bool:
        if self._closed:
            log.warning("chatbridge: session store closed; dropped a %s write", kind)
        return self._closed

    def create_session(self, session_id: str, created: float, settings: dict[str, Any]) -> None:
        """Record a new, empty session."""
        if self._refused("create"):
            return
        self._sessions.pop(session_id, None)  # re-created: it goes last, like a new row
        self._sessions[session_id] = _MemorySession(created, dict(settings))

    def delete_session(self, session_id: str) -> None:
        """Forget the session."""
        if self._refused("delete"):
            return
        self._sessions.pop(session_id, None)

    def append(self, session_id: str, event: LoggedEvent) -> None:
        """Record one event."""
        session = self._sessions.get(session_id)
        if session is not None and not self._refused("append"):
            session.events.append(event)
            session.last_seq = max(session.last_seq, event.seq)

    def remember(self, receipt: SendReceipt) -> None:
        """Record one receipt."""
        session = self._sessions.get(receipt.session_id)
        if session is not None and not self._refused("remember"):
            session.receipts[receipt.client_msg_id] = receipt

    def trim(self, session_id: str, first_event_seq: int, first_receipt_seq: int) -> None:
        """Forget old events (never the newest) and old receipts."""
        session = self._sessions.get(session_id)
        if session is None or self._refused("trim"):
            return
        events = session.events
        while len(events) > 1 and events[0].seq < first_event_seq:
            events.popleft()
        stale = [k for k, r in session.receipts.items() if r.seq < first_receipt_seq]
        for key in stale:
            del session.receipts[key]

    async def flush(self) -> None:
        """Everything is applied at once: nothing to wait for."""
        if self._closed:
            raise StoreError("the session store is closed")

    def close(self) -> None:
        """Nothing to release."""
        self._closed = True


# -- SQLite -------------------------------------------------------------------------------

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

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self.description = str(self.path)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()  # orders close() against concurrent writes
        self._closed = False
        self._wake = threading.Event()  # set by flush and close: commit now
        self._bulk = True  # JSON functions available (checked at open)
        self._lock_fd: int | None = None
        self._take_lock()
        try:
            self._check_and_migrate()
        except BaseException:
            self._release_lock()
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
        # Two servers appending to one file would interleave their seqs: the second one
        # is refused. flock dies with its process, so a crash never leaves it stale.
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._fail("cannot create its directory", exc) from exc
        if fcntl is None:  # pragma: no cover
            return
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise self._fail("cannot create its lock file", exc) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StoreError(
                f"chatbridge session store {self.path} is in use by another running "
                f"server (pid {holder}). Stop that server, or give this one its own file "
                "with c.ChatBridgeApp.store_path."
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def _connect(self) -> sqlite3.Connection:
        # Autocommit mode: transactions are explicit (BEGIN ... COMMIT) in the writer.
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
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

    def close(self) -> None:
        """Commit everything queued, stop the writer thread; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
            self._wake.set()
        self._thread.join()
        self._release_lock()

    def _put(self, item: Any) -> None:
        if self._closed:
            # After shutdown nothing may be lost silently, and nothing may crash the loop.
            if isinstance(item, _Barrier):
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
            if not isinstance(batch[0], _Barrier) and batch[0] is not _STOP:
                self._wake.wait(GROUP_COMMIT_WINDOW)
            self._wake.clear()
            # Group commit: everything queued by now goes in this one transaction.
            with contextlib.suppress(queue.Empty):
                while True:
                    batch.append(self._queue.get_nowait())
            writes = backlog
            barriers: list[_Barrier] = []
            for item in batch:
                if item is _STOP:
                    stopping = True
                elif isinstance(item, _Barrier):
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
                if len(writes) > MAX_BACKLOG:
                    log.error(
                        "chatbridge: session store %s: dropping %d unsaved writes",
                        self.path,
                        len(writes) - MAX_BACKLOG,
                    )
                backlog = writes[-MAX_BACKLOG:]
            except Exception as exc:
                # A write that can never succeed (a bug, a constraint): retrying it would
                # block every later write, so this batch is dropped, loudly. The thread
                # itself must live on, or every later flush would wait forever.
                error = StoreError(
                    f"chatbridge session store {self.path}: dropped {len(writes)} writes "
                    f"that cannot be saved ({type(exc).__name__}: {exc})"
                )
                log.exception("%s", error)
                backlog = []
            for barrier in barriers:
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
        conn.execute("BEGIN")
        try:
            for kind, params in runs:
                if kind == "append" and self._bulk:
                    conn.execute(_BULK_APPEND, (json.dumps(params),))
                    continue
                for statement in _STATEMENTS[kind]:
                    conn.executemany(statement, params)
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise


def _kind(write: _Write) -> str:
    return write[0]


def open_store(path: str | Path) -> SessionStore:
    """The store for `c.ChatBridgeApp.store_path`: `":memory:"` or a SQLite file."""
    if str(path) == MEMORY:
        return MemoryStore()
    return SqliteStore(path)
