"""How the SQLite store commits: group commit on a writer thread, urgent batches at once.

Writes queue in the order they were made. Whoever commits takes every queued
write at that moment, under one lock, and commits them in one transaction, so
writes apply in order whichever thread commits them:

- **The writer thread** commits in groups: the first write into an empty queue
  arms a `GROUP_COMMIT_WINDOW` timer on the event loop, and a `flush` or `close`
  wakes the thread at once. A burst of agent events thus costs a few commits a
  second, not one per event, and the thread is woken once per group, not per write.
- **An urgent `flush`** (someone waits for exactly this: a send for its `202`, the
  watchers for a user message or an answer's start) commits a small batch right
  there, on the event loop. Handing it to the thread and back costs two thread
  wake-ups and a wait for the GIL, several times the commit itself: in WAL mode
  with `synchronous=NORMAL` a commit is a write into the WAL file, without fsync.
  Checkpoints, which do fsync, stay on the writer thread (`wal_autocheckpoint` is
  off on this connection). If an urgent commit ever takes longer than
  `URGENT_BUDGET` (a congested disk), every commit goes back to the thread for
  `URGENT_PAUSE`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..metrics import BridgeMetrics
from .barrier import Barrier, settle
from .base import StoreError

log = logging.getLogger(__name__)

# The writer lets writes gather for this long before it commits them together; a
# flush (a send waiting for its 202) or close cuts the wait short. Under load the
# writer then works, and takes the GIL, 20 times a second instead of once per event:
# bench/store_cost.py measured 5 ms and 20 ms windows at +17% server CPU per fan-out
# delivery, 50 ms at none. The price: agent events reach the disk up to 50 ms after
# they were queued (they are shown only once committed: see fanout.py).
GROUP_COMMIT_WINDOW = 0.05

# An urgent flush commits on the caller's thread only a batch this small; a bigger
# one (a burst) is the writer thread's.
URGENT_MAX_WRITES = 64

# An urgent commit takes ~0.05 ms; one that took longer than this means the disk is
# slow, and the event loop must not wait for it: urgent commits pause this long.
URGENT_BUDGET = 0.002
URGENT_PAUSE = 60.0

# The writer thread checkpoints the WAL into the database at most this often (once
# something was committed since): it keeps the WAL short, and the fsyncs off the loop.
CHECKPOINT_INTERVAL = 1.0

# Writes kept for the next attempt after a failed commit (disk full, I/O error);
# past this many the oldest are dropped, loudly.
MAX_BACKLOG = 200_000

Write = tuple[str, Any]  # (kind, parameters)


@dataclass
class _BlockingBarrier:
    """A barrier a thread waits on (start-up, before the event loop runs)."""

    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


_STOP = object()


class GroupCommitter:
    """Commits queued writes in order, in groups, on a writer thread or, urgently, here."""

    def __init__(
        self,
        *,
        name: str,
        describe: str,
        connect: Callable[[], sqlite3.Connection],
        commit: Callable[[sqlite3.Connection, Iterable[Write]], None],
        metrics: BridgeMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._describe = describe  # "chatbridge session store <path>", for messages
        self._connect = connect
        self._commit = commit
        self._metrics = metrics
        self._clock = clock
        self._pending: list[Any] = []  # writes and barriers, in order
        self._pending_lock = threading.Lock()  # guards _pending and _closed
        self._commit_lock = threading.Lock()  # one transaction at a time, on any thread
        self._wake = threading.Event()  # commit what is pending now
        self._closed = False
        self._window_armed = False  # a GROUP_COMMIT_WINDOW timer is pending on the loop
        # Guarded by _commit_lock:
        self._conn: sqlite3.Connection | None = None
        self._backlog: list[Write] = []  # the writes of a failed commit, tried again
        self._uncheckpointed = False
        self._last_checkpoint = clock()
        self._urgent_paused_until = float("-inf")
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, write: Write) -> None:
        """Queue one write; the writer thread commits it within the window."""
        with self._pending_lock:
            if self._closed:
                # After shutdown nothing may be lost silently, nor crash the loop.
                log.warning("chatbridge: session store closed; dropped a %s write", write[0])
                return
            first = not self._pending
            self._pending.append(write)
        if first and not self._window_armed:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # start-up, before the loop runs: no window
                self._wake.set()
            else:
                self._window_armed = True
                loop.call_later(GROUP_COMMIT_WINDOW, self._window_over)

    def _window_over(self) -> None:
        # On the loop. An urgent flush may have committed everything meanwhile: then
        # the writer thread is not woken for nothing.
        self._window_armed = False
        if self._pending:
            self._wake.set()

    async def flush(self, urgent: bool = False) -> None:
        """Resolve when every write queued before this call is committed (or raise)."""
        if urgent and self._commit_here():
            return
        barrier = Barrier.on_running_loop()
        self._put_barrier(barrier)
        await barrier.future

    def commit_now(self, timeout: float) -> None:
        """Block until every write queued before this call is committed (or raise)."""
        barrier = _BlockingBarrier()
        self._put_barrier(barrier)
        if not barrier.done.wait(timeout):
            raise StoreError(f"{self._describe}: commit timed out")
        if barrier.error is not None:
            raise barrier.error

    def close(self) -> None:
        """Commit everything queued, stop the writer thread; idempotent."""
        with self._pending_lock:
            if self._closed:
                return
            self._closed = True
            self._pending.append(_STOP)
        self._wake.set()
        self._thread.join()

    def _put_barrier(self, barrier: Barrier | _BlockingBarrier) -> None:
        with self._pending_lock:
            if self._closed:
                raise StoreError(f"{self._describe} is closed")
            self._pending.append(barrier)
        self._wake.set()  # someone waits: no group-commit window for this batch

    def _take(self) -> list[Any]:
        with self._pending_lock:
            batch, self._pending = self._pending, []
            # The next write arms a window again, even if this one's timer never runs
            # (its loop stopped): a stale timer only wakes the thread once for nothing.
            self._window_armed = False
        return batch

    # -- an urgent commit, on the caller's thread ------------------------------------------

    def _commit_here(self) -> bool:
        """Commit what is pending now, here; False when that is the writer thread's job."""
        if self._clock() < self._urgent_paused_until:
            return False
        if not self._commit_lock.acquire(blocking=False):
            return False  # the writer thread is committing: this batch waits for it
        try:
            with self._pending_lock:
                if (
                    self._conn is None  # opening the file is the writer thread's job
                    or self._closed
                    or self._backlog
                    or len(self._pending) > URGENT_MAX_WRITES
                ):
                    return False
            batch = self._take()
            started = self._clock()
            error, _ = self._process(batch, asyncio.get_running_loop())
            took = self._clock() - started
        finally:
            self._commit_lock.release()
        if took > URGENT_BUDGET:
            self._urgent_paused_until = self._clock() + URGENT_PAUSE
            log.warning(
                "%s: a commit on the event loop took %.1f ms; committing on the writer "
                "thread only for the next %.0f s",
                self._describe,
                took * 1000,
                URGENT_PAUSE,
            )
        if self._checkpoint_due():
            self._wake.set()  # the writer thread checkpoints, off the loop
        if error is not None:
            raise error
        return True

    # -- the writer thread ---------------------------------------------------------------

    def _run(self) -> None:
        stopping = False
        while not stopping:
            self._wake.wait()
            self._wake.clear()
            with self._commit_lock:
                error, stopping = self._process(self._take(), None)
                if error is None and (stopping or self._checkpoint_due()):
                    self._checkpoint()
        with self._commit_lock:
            if self._backlog:
                log.error("%s closed with %d unsaved writes", self._describe, len(self._backlog))
            if self._conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("PRAGMA optimize")
                self._conn.close()

    def _checkpoint_due(self) -> bool:
        return self._uncheckpointed and self._clock() - self._last_checkpoint >= CHECKPOINT_INTERVAL

    def _checkpoint(self) -> None:
        if self._conn is None or not self._uncheckpointed:
            return
        try:
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:  # the next one tries again; commits do not need it
            log.warning("%s: WAL checkpoint failed (%s)", self._describe, exc)
            return
        self._uncheckpointed = False
        self._last_checkpoint = self._clock()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = self._connect()
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA wal_autocheckpoint = 0")  # the writer thread checkpoints
            self._conn = conn
        return self._conn

    def _process(
        self, batch: list[Any], loop: asyncio.AbstractEventLoop | None
    ) -> tuple[StoreError | None, bool]:
        """Commit a batch (after any backlog) and settle its barriers; with the commit lock.

        `loop` is the running loop when this runs on it. Returns the error its barriers
        got, and whether the batch asked the writer to stop.
        """
        writes = self._backlog
        barriers: list[Barrier | _BlockingBarrier] = []
        stopping = False
        for item in batch:
            if item is _STOP:
                stopping = True
            elif isinstance(item, (Barrier, _BlockingBarrier)):
                barriers.append(item)
            else:
                writes.append(item)
        error: StoreError | None = None
        try:
            self._commit(self._connection(), writes)
            self._backlog = []
            self._uncheckpointed = self._uncheckpointed or bool(writes)
        except (sqlite3.OperationalError, OSError) as exc:
            # Full disk, I/O error, file made read-only: may pass, so keep the writes.
            error = StoreError(
                f"{self._describe}: could not save {len(writes)} writes ({exc}); they "
                "will be tried again. Free disk space or check the file's permissions."
            )
            log.error("%s", error)
            self._metrics.record_commit_failure()
            if len(writes) > MAX_BACKLOG:
                log.error(
                    "%s: dropping %d unsaved writes", self._describe, len(writes) - MAX_BACKLOG
                )
            self._backlog = writes[-MAX_BACKLOG:]
        except BaseException as exc:
            # A write that can never succeed (a bug, a constraint, a damaged file):
            # retrying it would block every later write, so this batch is dropped,
            # loudly; every send it held is refused (503) and its receipt retracted.
            # The writer must live on, or every later flush would wait forever.
            error = StoreError(
                f"{self._describe}: dropped {len(writes)} writes that cannot be saved "
                f"({type(exc).__name__}: {exc})"
            )
            log.exception("%s", error)
            self._metrics.record_commit_failure()
            self._backlog = []
        for barrier in barriers:
            if isinstance(barrier, _BlockingBarrier):
                barrier.error = error
                barrier.done.set()
            elif barrier.loop is loop:
                loop.call_soon(settle, barrier.future, error)
            else:
                barrier.release(error)
        return error, stopping
