"""The session stores: one contract both must keep, SQLite specifics, and restore.

The contract tests run against `MemoryStore` and `SqliteStore` alike; the
restore tests rebuild a `ChatBridge` from what an earlier one stored, in one
process (the real-process restarts are in test_restart.py).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jupyter_chatbridge.clock import FakeScheduler
from jupyter_chatbridge.protocol import dumps
from jupyter_chatbridge.server.agents import Agent, EchoAgent, UserMessage
from jupyter_chatbridge.server.bridge import (
    INTERRUPTED_MESSAGE,
    BridgeError,
    BridgeLimits,
    ChatBridge,
)
from jupyter_chatbridge.server.state import EventLog, LoggedEvent, SendReceipt
from jupyter_chatbridge.server.store import (
    SCHEMA_VERSION,
    MemoryStore,
    SessionStore,
    SqliteStore,
    StoredSession,
    StoreError,
    open_store,
)

from .support import Api, eventually


def event(session_id: str, seq: int, event_type: str = "block_delta", **fields: Any) -> LoggedEvent:
    body = {"type": event_type, "sessionId": session_id, "seq": seq, **fields}
    return LoggedEvent(seq, event_type, json.dumps(body))


def by_id(stored: list[StoredSession]) -> dict[str, StoredSession]:
    return {s.id: s for s in stored}


StoreFactory = Callable[[], SessionStore]


@pytest.fixture(params=["memory", "sqlite"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Makes the store under test; SQLite ones share one file, so each must be closed
    before the next is made (a second open store on a file is refused)."""
    made: list[SessionStore] = []
    memory = MemoryStore()

    def make() -> SessionStore:
        store: SessionStore
        if request.param == "memory":
            # "Reopening" memory: a new store over the same data, as a file would be.
            store = MemoryStore()
            store._sessions = memory._sessions
        else:
            store = SqliteStore(tmp_path / "data" / "sessions.sqlite3")
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


@pytest.fixture
def store(make_store: StoreFactory) -> SessionStore:
    return make_store()


# -- the contract -------------------------------------------------------------------------


async def test_a_new_store_is_empty(store: SessionStore) -> None:
    assert store.load() == []
    await store.flush()  # nothing queued: resolves at once


async def test_round_trip_of_sessions_events_receipts_and_settings(store: SessionStore) -> None:
    settings = {"prefix": "Hé: ", "model": {"name": "x", "temperature": 0.5}, "tags": [1, None]}
    store.create_session("s1", 1700000000.5, settings)
    store.create_session("s2", 1700000001.0, {})
    for seq in range(1, 6):
        store.append("s1", event("s1", seq, text=f"chunk {seq} ✓"))
    store.remember(SendReceipt("s1", "m1", 1))
    store.remember(SendReceipt("s1", "m2", 3))
    store.append("s2", event("s2", 1, "user_message", clientMsgId="a", text="hi"))
    await store.flush()

    loaded = store.load()
    assert [s.id for s in loaded] == ["s1", "s2"]  # creation order
    s1, s2 = loaded
    assert s1.created == 1700000000.5 and s1.settings == settings
    assert s1.events == [event("s1", seq, text=f"chunk {seq} ✓") for seq in range(1, 6)]
    assert s1.last_seq == 5
    assert s1.receipts == [SendReceipt("s1", "m1", 1), SendReceipt("s1", "m2", 3)]
    assert s2.events == [event("s2", 1, "user_message", clientMsgId="a", text="hi")]
    assert (s2.last_seq, s2.receipts, s2.settings) == (1, [], {})


async def test_event_text_comes_back_byte_for_byte(store: SessionStore) -> None:
    texts = [
        'quotes " and \\ backslashes',
        "line\nbreak\ttab\u0000nul",
        "emoji 🦜 and 中文",
        "]}",
        "",
    ]
    store.create_session("s1", 1.0, {})
    events = [
        LoggedEvent(seq, "block_delta", dumps({"type": "block_delta", "seq": seq, "text": text}))
        for seq, text in enumerate(texts, 1)
    ]
    for e in events:
        store.append("s1", e)
    await store.flush()
    assert store.load()[0].events == events


async def test_writes_apply_in_the_order_they_were_made(store: SessionStore) -> None:
    store.create_session("s1", 1.0, {"v": 1})
    store.append("s1", event("s1", 1))
    store.remember(SendReceipt("s1", "old", 1))
    store.delete_session("s1")
    store.create_session("s1", 2.0, {"v": 2})  # same id again: starts empty
    store.append("s1", event("s1", 1, "user_message", text="new"))
    store.create_session("s3", 3.0, {})
    await store.flush()
    loaded = store.load()
    assert [s.id for s in loaded] == ["s1", "s3"]
    assert loaded[0].settings == {"v": 2}
    assert loaded[0].events == [event("s1", 1, "user_message", text="new")]
    assert loaded[0].receipts == []


async def test_delete_removes_every_row_of_the_session(store: SessionStore) -> None:
    for session_id in ("keep", "gone"):
        store.create_session(session_id, 1.0, {"a": session_id})
        store.append(session_id, event(session_id, 1))
        store.remember(SendReceipt(session_id, "m", 1))
    store.delete_session("gone")
    store.delete_session("never-existed")  # harmless
    await store.flush()
    assert [s.id for s in store.load()] == ["keep"]
    if isinstance(store, SqliteStore):
        with sqlite3.connect(store.path) as conn:
            for table, column in (("sessions", "id"), ("events", "session_id")):
                sql = f"SELECT COUNT(*) FROM {table} WHERE {column} = 'gone'"
                assert conn.execute(sql).fetchone() == (0,)
            sql = "SELECT COUNT(*) FROM receipts WHERE session_id = 'gone'"
            assert conn.execute(sql).fetchone() == (0,)


async def test_trim_forgets_old_events_and_receipts(store: SessionStore) -> None:
    store.create_session("s1", 1.0, {})
    for seq in range(1, 11):
        store.append("s1", event("s1", seq))
    for seq in (2, 5, 8):
        store.remember(SendReceipt("s1", f"m{seq}", seq))
    store.trim("s1", 6, 5)
    await store.flush()
    (s1,) = store.load()
    assert [e.seq for e in s1.events] == [6, 7, 8, 9, 10]
    assert [r.seq for r in s1.receipts] == [5, 8]
    assert s1.last_seq == 10


async def test_trim_never_removes_the_newest_event(store: SessionStore) -> None:
    store.create_session("s1", 1.0, {})
    for seq in range(1, 4):
        store.append("s1", event("s1", seq))
    store.remember(SendReceipt("s1", "m", 1))
    store.trim("s1", 100, 100)
    store.trim("nobody", 5, 5)  # an unknown session: nothing happens
    await store.flush()
    (s1,) = store.load()
    assert [e.seq for e in s1.events] == [3] and s1.last_seq == 3 and s1.receipts == []


async def test_load_ignores_rows_of_sessions_never_created(store: SessionStore) -> None:
    store.append("ghost", event("ghost", 1))
    store.remember(SendReceipt("ghost", "m", 1))
    await store.flush()
    assert store.load() == []


async def test_flush_is_a_barrier_for_everything_before_it(store: SessionStore) -> None:
    store.create_session("s1", 1.0, {})

    async def burst(start: int) -> None:
        for seq in range(start, start + 100):
            store.append("s1", event("s1", seq))
        await store.flush()

    # Flushes interleaved with writes from several tasks all resolve, each after its writes.
    await asyncio.gather(*(burst(start) for start in range(1, 1001, 100)))
    (s1,) = store.load()
    assert [e.seq for e in s1.events] == list(range(1, 1001))


async def test_close_is_idempotent_and_final(make_store: StoreFactory) -> None:
    store = make_store()
    store.create_session("s1", 1.0, {})
    store.append("s1", event("s1", 1))
    store.close()  # commits what was queued
    store.close()
    with pytest.raises(StoreError):
        await store.flush()
    store.append("s1", event("s1", 2))  # dropped with a warning, never an exception
    again = make_store()
    assert [e.seq for e in again.load()[0].events] == [1]


def test_open_store_picks_the_implementation(tmp_path: Path) -> None:
    assert isinstance(open_store(":memory:"), MemoryStore)
    store = open_store(tmp_path / "s.sqlite3")
    try:
        assert isinstance(store, SqliteStore)
    finally:
        store.close()


# -- SQLite specifics --------------------------------------------------------------------------


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "dir" / "sessions.sqlite3"


async def test_sqlite_reopened_sees_the_data_and_runs_in_wal_mode(db: Path) -> None:
    store = SqliteStore(db)  # creates the missing directories
    store.create_session("s1", 1.0, {"prefix": ">"})
    store.append("s1", event("s1", 1))
    store.remember(SendReceipt("s1", "m1", 1))
    await store.flush()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        assert version == (str(SCHEMA_VERSION),)
    store.close()
    again = SqliteStore(db)
    try:
        (s1,) = again.load()
        assert (s1.settings, s1.last_seq, s1.receipts) == (
            {"prefix": ">"},
            1,
            [SendReceipt("s1", "m1", 1)],
        )
    finally:
        again.close()


def test_sqlite_refuses_a_file_that_is_not_a_database(db: Path) -> None:
    db.parent.mkdir(parents=True)
    garbage = b"these are not the pages you are looking for\n" * 200
    db.write_bytes(garbage)
    with pytest.raises(StoreError) as caught:
        SqliteStore(db)
    message = str(caught.value)
    assert str(db) in message and "not a SQLite database" in message
    assert "delete it" in message and "c.ChatBridgeApp.store_path" in message
    assert db.read_bytes() == garbage  # never "repaired" into an empty store
    db.unlink()
    SqliteStore(db).close()  # the refusal left no lock behind


async def test_sqlite_refuses_a_damaged_database(db: Path) -> None:
    store = SqliteStore(db)
    store.create_session("s1", 1.0, {})
    for seq in range(1, 2001):
        store.append("s1", event("s1", seq, text="x" * 100))
    await store.flush()
    store.close()
    data = bytearray(db.read_bytes())
    page = 4096
    assert len(data) > 10 * page
    data[3 * page : 6 * page] = b"\xa5" * (3 * page)  # scribble over some b-tree pages
    db.write_bytes(bytes(data))
    with pytest.raises(StoreError) as caught:
        SqliteStore(db)
    assert str(db) in str(caught.value) and "damaged" in str(caught.value)


def test_sqlite_refuses_an_unwritable_location(tmp_path: Path) -> None:
    regular = tmp_path / "a-file"
    regular.write_text("not a directory")
    with pytest.raises(StoreError) as caught:
        SqliteStore(regular / "sessions.sqlite3")
    assert str(regular / "sessions.sqlite3") in str(caught.value)
    assert "cannot create its directory" in str(caught.value)
    (tmp_path / "a-dir.sqlite3").mkdir()
    with pytest.raises(StoreError, match="not a regular file"):
        SqliteStore(tmp_path / "a-dir.sqlite3")


def test_sqlite_refuses_a_file_another_server_has_open(db: Path) -> None:
    first = SqliteStore(db)
    try:
        with pytest.raises(StoreError, match="in use by another running server"):
            SqliteStore(db)
    finally:
        first.close()
    SqliteStore(db).close()  # free again once the first one closed


def test_sqlite_refuses_a_newer_schema(db: Path) -> None:
    SqliteStore(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="newer version"):
        SqliteStore(db)


async def test_sqlite_full_disk_fails_the_flush_with_a_clear_error(db: Path) -> None:
    store = SqliteStore(db)
    connect = store._connect

    def small_disk() -> sqlite3.Connection:
        conn = connect()
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages + 2}")  # SQLITE_FULL past this
        return conn

    store._connect = small_disk  # type: ignore[method-assign]  # the writer's connection
    try:
        store.create_session("s1", 1.0, {})
        store.append("s1", event("s1", 1, text="x" * 100_000))
        with pytest.raises(StoreError) as caught:
            await store.flush()
        assert str(db) in str(caught.value) and "full" in str(caught.value)
    finally:
        store.close()


async def test_sqlite_a_failed_commit_fails_the_flush_and_is_retried(db: Path) -> None:
    store = SqliteStore(db)
    commit = store._commit
    failures = [sqlite3.OperationalError("disk I/O error")]

    def flaky(conn: sqlite3.Connection, writes: Any) -> None:
        if failures:
            raise failures.pop()
        commit(conn, writes)

    store._commit = flaky  # type: ignore[method-assign]
    try:
        store.create_session("s1", 1.0, {})
        store.append("s1", event("s1", 1))
        with pytest.raises(StoreError, match="disk I/O error"):
            await store.flush()
        store.append("s1", event("s1", 2))
        await store.flush()  # the failed writes went in with this batch, in order
        (s1,) = store.load()
        assert [e.seq for e in s1.events] == [1, 2]
    finally:
        store.close()


async def test_sqlite_a_write_that_can_never_succeed_is_dropped_not_retried(db: Path) -> None:
    store = SqliteStore(db)
    commit = store._commit
    failures = [sqlite3.IntegrityError("UNIQUE constraint failed")]

    def poisoned(conn: sqlite3.Connection, writes: Any) -> None:
        if failures:
            raise failures.pop()
        commit(conn, writes)

    store._commit = poisoned  # type: ignore[method-assign]
    try:
        store.create_session("s1", 1.0, {})
        with pytest.raises(StoreError, match="dropped 1 writes"):
            await store.flush()
        store.create_session("s2", 1.0, {})
        await store.flush()  # the writer lives on; later writes are saved
        assert [s.id for s in store.load()] == ["s2"]
    finally:
        store.close()


async def test_sqlite_writes_never_wait_for_the_disk(db: Path) -> None:
    store = SqliteStore(db)
    commit = store._commit
    disk_is_slow = threading.Event()

    def slow(conn: sqlite3.Connection, writes: Any) -> None:
        disk_is_slow.wait(10)
        commit(conn, writes)

    store._commit = slow  # type: ignore[method-assign]
    try:
        store.create_session("s1", 1.0, {})
        for seq in range(1, 5001):  # all queued while the writer is stuck
            store.append("s1", event("s1", seq))
        flushed = asyncio.ensure_future(store.flush())
        await asyncio.sleep(0.05)
        assert not flushed.done()  # the barrier waits for the commit...
        disk_is_slow.set()
        await flushed  # ...and is resolved on this loop once it is done
        assert store.load()[0].last_seq == 5000
    finally:
        disk_is_slow.set()
        store.close()


# -- EventLog.load ----------------------------------------------------------------------------


def test_event_log_load_keeps_the_contiguous_tail_within_its_limits() -> None:
    log = EventLog("s1", max_events=3, max_receipts=2)
    events = [event("s1", seq) for seq in (1, 2, 4, 5, 6, 7)]  # a hole at 3
    receipts = [SendReceipt("s1", f"m{seq}", seq) for seq in (5, 1, 2)]
    log.load(events, 7, receipts)
    assert [e.seq for e in log.after(0)] == [5, 6, 7]
    assert (log.first_seq, log.last_seq) == (5, 7)
    assert log.receipt("m1") is None and log.receipt("m5") == SendReceipt("s1", "m5", 5)
    assert log.first_receipt_seq == 2
    assert log.append("block_delta", {}).seq == 8

    hole_at_the_end = EventLog("s1", max_events=10, max_receipts=10)
    hole_at_the_end.load([event("s1", 1), event("s1", 2)], 3, [])
    assert hole_at_the_end.after(0) == [] and hole_at_the_end.last_seq == 3
    assert hole_at_the_end.first_receipt_seq == 4


# -- restore: a new bridge on what an old one stored ------------------------------------------


class StuckAgent(Agent):
    """Starts answering, then waits forever: the run a crash cuts short."""

    async def reply(self, message: UserMessage) -> AsyncIterator[str]:
        yield "thinking "
        await asyncio.Event().wait()
        yield "never"  # pragma: no cover


def make_bridge(store: SessionStore, agent: type[Agent], **limits: Any) -> ChatBridge:
    def factory(session_id: str, settings: dict[str, Any]) -> Agent:
        if agent is EchoAgent:
            return EchoAgent(session_id=session_id, settings=settings, chunk_delay=0.0)
        return agent(session_id=session_id, settings=settings)

    return ChatBridge(BridgeLimits(**limits), FakeScheduler(), factory, store=store)


def types_and_texts(bridge: ChatBridge, session_id: str) -> list[tuple[str, Any]]:
    events = [json.loads(e.data) for e in bridge.history(session_id, 0, None)[0]]
    return [(e["type"], e.get("text", e.get("message"))) for e in events]


async def crash(bridge: ChatBridge) -> None:
    """Stop the runs like SIGKILL would: nothing published, nothing closed."""
    for task in list(bridge.runner.runs.values()):
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_restore_closes_the_cut_answer_and_answers_what_was_accepted(
    make_store: StoreFactory,
) -> None:
    store = make_store()
    old = make_bridge(store, StuckAgent)
    old.create_session("s1", {"prefix": "Again: "})
    first = old.send("s1", "m1", "cut short", None)
    second = old.send("s1", "m2", "still waiting", None)
    await eventually(lambda: len(old.history("s1", 0, None)[0]) == 4)  # u1 u2 start delta
    await crash(old)
    await store.flush()
    store.close()

    store = make_store()
    new = make_bridge(store, EchoAgent)
    assert new.restore() == 1
    new.start_restored_runs()  # as the app does once its loop runs
    session = new.session("s1")
    assert session.settings == {"prefix": "Again: "}
    await eventually(lambda: not session.running and not session.pending)
    assert types_and_texts(new, "s1") == [
        ("user_message", "cut short"),
        ("user_message", "still waiting"),
        ("message_start", None),
        ("block_delta", "thinking "),
        ("error", INTERRUPTED_MESSAGE),
        ("message_end", None),
        ("message_start", None),
        ("block_delta", "Again: "),  # the settings reached the new agent
        ("block_delta", "still "),
        ("block_delta", "waiting"),
        ("message_end", None),
    ]
    # Both receipts survived: resends are duplicates with their first seq, and no new run.
    assert new.send("s1", "m1", "cut short", None).receipt == first.receipt
    assert new.send("s1", "m2", "still waiting", None).duplicate
    assert new.send("s1", "m2", "x", None).receipt.seq == second.receipt.seq
    assert not session.pending and "s1" not in new.runner.runs
    # What the new bridge published is durable too: a third start sees a closed answer.
    await store.flush()
    store.close()
    store = make_store()
    third = make_bridge(store, EchoAgent)
    third.restore()
    assert types_and_texts(third, "s1") == types_and_texts(new, "s1")
    assert not third.session("s1").pending


async def test_the_store_keeps_the_window_memory_keeps(make_store: StoreFactory) -> None:
    store = make_store()
    bridge = make_bridge(
        store, EchoAgent, max_session_events=300, max_receipts_per_session=5, max_pending_inputs=500
    )
    bridge.create_session("s1")
    for i in range(200):  # 200 messages, 4 events each
        bridge.send("s1", f"m{i}", "hi", None)
    session = bridge.session("s1")
    await eventually(lambda: not session.pending and not session.running)
    bridge.delete_session("s1")
    bridge.create_session("s1")  # deleted rows never come back
    bridge.create_session("s2")
    for i in range(200):
        bridge.send("s2", f"m{i}", "hi", None)
    session = bridge.session("s2")
    await eventually(lambda: not session.pending and not session.running)
    await store.flush()
    loaded = by_id(store.load())
    assert loaded["s1"].events == [] and loaded["s1"].last_seq == 0
    s2 = loaded["s2"]
    assert s2.last_seq == session.log.last_seq == 1000  # 5 events per message
    # Trimmed every TRIM_EVERY (256) seqs: at most that many beyond memory's window.
    assert 300 <= len(s2.events) < 300 + 256
    assert s2.events[-300:] == session.log.after(0)
    assert len(s2.receipts) < 5 + 256 and s2.receipts[-5:] == [
        session.log.receipt(f"m{i}") for i in range(195, 200)
    ]
    store.close()
    restored = make_bridge(make_store(), EchoAgent, max_session_events=300)
    restored.restore()
    assert restored.session("s2").log.after(0) == session.log.after(0)


async def test_settings_are_checked(store: SessionStore) -> None:
    bridge = make_bridge(store, EchoAgent)
    for bad in ([1], "x", {"big": "x" * 20000}):
        with pytest.raises(BridgeError) as caught:
            bridge.create_session("s1", bad)  # type: ignore[arg-type]
        assert caught.value.status == 400
    assert bridge.create_session("s1", {"prefix": "P "}).settings == {"prefix": "P "}


# -- the HTTP surface: settings, and "accepted" meaning durable ---------------------------------


async def test_settings_over_http(api: Api, bridge: ChatBridge) -> None:
    created = await api.ok(
        "POST", "sessions", body={"sessionId": "s1", "settings": {"prefix": "> "}}
    )
    assert "settings" not in created  # list and create answers keep the contract's shape
    assert (await api.ok("GET", "sessions", "s1"))["settings"] == {"prefix": "> "}
    await api.ok("POST", "sessions", body={"sessionId": "s2"})
    assert (await api.ok("GET", "sessions", "s2"))["settings"] == {}
    for bad in ([1], "x", {"big": "x" * 20000}):
        status, body = await api("POST", "sessions", body={"sessionId": "s3", "settings": bad})
        assert (status, body["code"]) == (400, "bad_request"), body
    assert "s3" not in bridge.sessions
    # EchoAgent honours the session's prefix.
    await api.ok("POST", "send", body={"sessionId": "s1", "clientMsgId": "m1", "text": "hi"})
    session = bridge.session("s1")
    await eventually(lambda: session.log.last_seq == 5)
    texts = [json.loads(e.data).get("text") for e in session.log.after(0)]
    assert texts[2:4] == ["> ", "hi"]


class FailingFlush:
    """A store whose commits fail until `healed`: sends must not be called accepted."""

    def __init__(self, store: SessionStore) -> None:
        self.store = store
        self.healed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def flush(self) -> None:
        if not self.healed:
            raise StoreError("chatbridge session store /x: could not save 1 writes (disk full)")
        await self.store.flush()


async def test_a_send_the_store_could_not_save_is_503_and_a_retry_is_accepted(
    api: Api, bridge: ChatBridge, jp_ws_fetch: Any
) -> None:
    await api.ok("POST", "sessions", body={"sessionId": "s1"})
    failing = FailingFlush(bridge.store)
    bridge.store = failing
    body = {"sessionId": "s1", "clientMsgId": "m1", "text": "hi"}
    status, answer = await api("POST", "send", body=body)
    assert status == 503 and answer["code"] == "busy" and "disk full" in answer["error"]
    assert api.last_response.headers["Retry-After"] == "1"
    ws = await jp_ws_fetch("chatbridge", "api", "sessions", "s1", "ws")
    ws.write_message(json.dumps({"type": "send", "clientMsgId": "w1", "text": "hi"}))
    while (frame := json.loads(await ws.read_message()))["type"] not in ("ack", "nack"):
        pass
    assert frame["type"] == "nack" and frame["code"] == "busy" and frame["clientMsgId"] == "w1"
    failing.healed = True
    # The client's retry, same clientMsgId: its message is there once, now durable.
    status, answer = await api("POST", "send", body=body)
    assert status == 200 and answer["duplicate"] is True and answer["seq"] == 1
    ws.write_message(json.dumps({"type": "send", "clientMsgId": "w1", "text": "hi"}))
    while (frame := json.loads(await ws.read_message()))["type"] not in ("ack", "nack"):
        pass
    assert frame["type"] == "ack" and frame["duplicate"] is True
    ws.close()
    users = [e for e in bridge.session("s1").log.after(0) if e.type == "user_message"]
    assert len(users) == 2
