"""Where the SQLite store commits (sqlite_commit.py): groups on its writer thread, and a
small urgent batch at once on the event loop, in order either way, with the fsyncs of
checkpoints kept off the loop and a slow disk sending every commit back to the thread.

Which thread ran a statement is read from SQLite's own trace of the store's connection.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jupyter_chatbridge.server.store import SqliteStore
from jupyter_chatbridge.server.store.sqlite_commit import (
    CHECKPOINT_INTERVAL,
    URGENT_BUDGET,
    URGENT_MAX_WRITES,
    URGENT_PAUSE,
)

from .store_support import event
from .support import eventually

LOOP_THREAD = threading.current_thread().name


class Clock:
    """The store's monotonic clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Traced:
    """A store whose connection reports each statement with the thread that ran it."""

    def __init__(self, path: Path) -> None:
        self.clock = Clock()
        self.statements: list[tuple[str, str]] = []
        self.store = SqliteStore(path, clock=self.clock)
        connect = self.store._connect

        def traced() -> sqlite3.Connection:
            conn = connect()
            conn.set_trace_callback(
                lambda sql: self.statements.append((threading.current_thread().name, sql))
            )
            return conn

        self.store._connect = traced  # type: ignore[method-assign]

    def commits(self) -> list[str]:
        """The thread of each commit, oldest first."""
        return [thread for thread, sql in self.statements if sql == "COMMIT"]

    async def opened(self) -> None:
        """The writer thread opens the connection, with the first commit it makes."""
        self.store.create_session("s1", 1.0, {})
        await self.store.flush()
        writer = self.store._committer._thread.name
        assert self.commits() == [writer]
        # No commit checkpoints by itself (an fsync), so none made on the loop does.
        assert (writer, "PRAGMA wal_autocheckpoint = 0") in self.statements
        self.statements.clear()


@pytest.fixture
def traced(tmp_path: Path) -> Iterator[Traced]:
    made = Traced(tmp_path / "sessions.sqlite3")
    yield made
    made.store.close()


def stored_seqs(path: Path) -> list[int]:
    with sqlite3.connect(path) as conn:
        return [seq for (seq,) in conn.execute("SELECT seq FROM events ORDER BY seq")]


async def test_an_urgent_flush_commits_right_there_on_the_loop(traced: Traced) -> None:
    await traced.opened()
    traced.store.append("s1", event("s1", 1))
    await traced.store.flush(urgent=True)
    assert traced.commits() == [LOOP_THREAD]
    assert stored_seqs(traced.store.path) == [1]  # committed when the flush returned
    # A plain flush (a run of an answer's text) is the writer thread's.
    traced.store.append("s1", event("s1", 2))
    await traced.store.flush()
    assert traced.commits() == [LOOP_THREAD, traced.store._committer._thread.name]


async def test_an_urgent_burst_is_left_to_the_writer_thread(traced: Traced) -> None:
    await traced.opened()
    for seq in range(1, URGENT_MAX_WRITES + 2):
        traced.store.append("s1", event("s1", seq))
    await traced.store.flush(urgent=True)
    assert traced.commits() == [traced.store._committer._thread.name]
    assert len(stored_seqs(traced.store.path)) == URGENT_MAX_WRITES + 1


async def test_an_urgent_flush_waits_while_the_writer_thread_commits(traced: Traced) -> None:
    """Writes apply in order whichever thread commits them: a later urgent write never
    overtakes an earlier batch the writer thread is still committing."""
    await traced.opened()
    store = traced.store
    commit = store._commit
    in_commit, release = threading.Event(), threading.Event()

    def slow(conn: sqlite3.Connection, writes: Any) -> None:
        if threading.current_thread().name != LOOP_THREAD:
            in_commit.set()
            release.wait(10)
        commit(conn, writes)

    store._commit = slow  # type: ignore[method-assign]
    store.delete_session("s1")  # the writer thread is in the middle of this one...
    first = asyncio.ensure_future(store.flush())
    await eventually(in_commit.is_set)
    store.create_session("s1", 2.0, {})
    store.append("s1", event("s1", 7))  # ...when these come, urgently
    second = asyncio.ensure_future(store.flush(urgent=True))
    await asyncio.sleep(0)
    assert not second.done()  # not committed on the loop around the writer's batch
    release.set()
    await asyncio.gather(first, second)
    assert LOOP_THREAD not in traced.commits()
    (s1,) = store.load()
    assert (s1.created, [e.seq for e in s1.events]) == (2.0, [7])


async def test_a_slow_urgent_commit_sends_commits_back_to_the_writer_thread(
    traced: Traced, caplog: pytest.LogCaptureFixture
) -> None:
    await traced.opened()
    store, clock = traced.store, traced.clock
    commit = store._commit

    def slow_disk(conn: sqlite3.Connection, writes: Any) -> None:
        commit(conn, writes)
        if threading.current_thread().name == LOOP_THREAD:
            clock.now += URGENT_BUDGET * 2  # this commit made the event loop wait

    store._commit = slow_disk  # type: ignore[method-assign]
    store.append("s1", event("s1", 1))
    await store.flush(urgent=True)
    assert "a commit on the event loop took" in caplog.text
    writer = store._committer._thread.name
    store.append("s1", event("s1", 2))
    await store.flush(urgent=True)
    assert traced.commits() == [LOOP_THREAD, writer]  # paused: the loop waits for no disk
    clock.now += URGENT_PAUSE
    store.append("s1", event("s1", 3))
    await store.flush(urgent=True)
    assert traced.commits() == [LOOP_THREAD, writer, LOOP_THREAD]
    assert stored_seqs(store.path) == [1, 2, 3]


async def test_checkpoints_run_on_the_writer_thread_never_on_the_loop(traced: Traced) -> None:
    await traced.opened()
    store, clock = traced.store, traced.clock
    writer = store._committer._thread.name

    def checkpoints() -> list[str]:
        return [thread for thread, sql in traced.statements if "wal_checkpoint" in sql]

    for seq in range(1, 4):
        store.append("s1", event("s1", seq))
        await store.flush(urgent=True)
    assert checkpoints() == []  # not yet due
    clock.now += CHECKPOINT_INTERVAL
    store.append("s1", event("s1", 4))
    await store.flush(urgent=True)  # committed here; the writer thread is asked to checkpoint
    await eventually(lambda: checkpoints() == [writer])
    assert traced.commits() == [LOOP_THREAD] * 4
