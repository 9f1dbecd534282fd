"""The store's file lock and failed commits.

- One server per store: the lock is taken on the resolved path, so a symlink and its
  target (or a path through a symlinked folder) are one store, and the refusal names
  the holder's pid.
- A commit that fails, whatever it raises, answers 503, leaves no receipt that could
  answer `duplicate: true`, and the client's retry succeeds once the store works, with
  the message stored once. The faults are raised at the writer thread's seam
  (`SqliteStore._commit`) of a real server's store.
- An answer's first text is shown (so committed) before its agent is read on.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from traitlets.config import Config

from jupyter_chatbridge.clock import FakeScheduler
from jupyter_chatbridge.server.agents import Agent, EchoAgent, UserMessage
from jupyter_chatbridge.server.bridge import BridgeError, BridgeLimits, ChatBridge
from jupyter_chatbridge.server.store import MemoryStore, SqliteStore, StoreError, StoreLocked

from .support import Api, eventually

# -- the lock ------------------------------------------------------------------------------


def test_a_symlink_and_its_target_are_one_store(tmp_path: Path) -> None:
    target = tmp_path / "real" / "sessions.sqlite3"
    first = SqliteStore(target)
    try:
        link = tmp_path / "link.sqlite3"
        link.symlink_to(target)
        (tmp_path / "folder-link").symlink_to(target.parent, target_is_directory=True)
        for other in (link, tmp_path / "folder-link" / "sessions.sqlite3"):
            with pytest.raises(StoreLocked) as caught:
                SqliteStore(other)
            message = str(caught.value)
            assert str(other) in message and f"(pid {os.getpid()})" in message
            assert caught.value.pid == str(os.getpid())
        # The lock file sits beside the real file and holds the owner's pid.
        assert (target.parent / "sessions.sqlite3.lock").read_text() == str(os.getpid())
        assert not (tmp_path / "link.sqlite3.lock").exists()
    finally:
        first.close()
    again = SqliteStore(tmp_path / "link.sqlite3")  # released on close: the link opens now
    again.close()


async def test_a_store_opened_through_a_symlink_writes_the_target(tmp_path: Path) -> None:
    target = tmp_path / "real.sqlite3"
    link = tmp_path / "link.sqlite3"
    link.symlink_to(target)
    store = SqliteStore(link)
    try:
        store.create_session("s1", 1.0, {})
        await store.flush()
    finally:
        store.close()
    assert link.is_symlink()  # never replaced by a file of its own
    with sqlite3.connect(target) as conn:
        assert conn.execute("SELECT id FROM sessions").fetchall() == [("s1",)]


# -- failed commits over HTTP -----------------------------------------------------------------


@pytest.fixture
def jp_server_config(jp_server_config: Config, tmp_path: Path) -> Config:
    """The test server on a real SQLite store."""
    jp_server_config.ChatBridgeApp.store_path = str(tmp_path / "store" / "sessions.sqlite3")
    return jp_server_config


FAULTS: list[Callable[[], BaseException]] = [
    lambda: sqlite3.OperationalError("disk I/O error"),
    lambda: sqlite3.DatabaseError("database disk image is malformed"),
    lambda: sqlite3.IntegrityError("UNIQUE constraint failed"),
    lambda: sqlite3.ProgrammingError("Cannot operate on a closed database."),
    lambda: OSError(28, "No space left on device"),
    lambda: MemoryError(),
    lambda: RuntimeError("a bug in the writer"),
    lambda: Exception("anything at all"),
]


def stored_rows(path: Path) -> tuple[list[Any], list[Any]]:
    """The user messages and receipts the file holds (what a restart would load)."""
    with sqlite3.connect(path) as conn:
        users = conn.execute(
            "SELECT seq, data FROM events WHERE session_id = 's1' AND type = 'user_message'"
        ).fetchall()
        receipts = conn.execute(
            "SELECT client_msg_id, seq FROM receipts WHERE session_id = 's1'"
        ).fetchall()
    return users, receipts


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: type(f()).__name__)
async def test_a_failed_commit_is_503_leaves_no_receipt_and_a_retry_succeeds(
    api: Api, bridge: ChatBridge, fault: Callable[[], BaseException]
) -> None:
    store = bridge.store
    assert isinstance(store, SqliteStore)
    await api.ok("POST", "sessions", body={"sessionId": "s1"})
    commit = store._commit
    failing = [True]

    def seam(conn: sqlite3.Connection, writes: Any) -> None:
        if failing[0]:
            raise fault()
        commit(conn, writes)

    store._commit = seam  # type: ignore[method-assign]
    body = {"sessionId": "s1", "clientMsgId": "m1", "text": "hello"}
    status, answer = await api("POST", "send", body=body)
    assert (status, answer["code"]) == (503, "busy"), answer
    assert api.last_response.headers["Retry-After"] == "1"
    session = bridge.session("s1")
    assert session.log.receipt("m1") is None  # nothing answers "duplicate" for it
    # While the store still fails, a retry is refused again, never told "duplicate".
    status, answer = await api("POST", "send", body=body)
    assert (status, answer["code"]) == (503, "busy"), answer
    assert session.log.receipt("m1") is None
    assert stored_rows(store.path) == ([], [])  # nothing durable, no receipt

    failing[0] = False
    status, answer = await api("POST", "send", body=body)
    assert status == 200 and answer["seq"] == 1 and answer["duplicate"] is True, answer
    assert session.log.receipt("m1") is not None
    users, receipts = stored_rows(store.path)
    assert [(seq, json.loads(data)["clientMsgId"]) for seq, data in users] == [(1, "m1")]
    assert receipts == [("m1", 1)]
    # Accepted once: one user message in the history, one answer, and a new message works.
    status, answer = await api("POST", "send", body={**body, "clientMsgId": "m2"})
    assert status == 202, answer
    await eventually(lambda: not session.running and not session.pending)
    events = [json.loads(e.data) for e in session.log.after(0)]
    assert [e["clientMsgId"] for e in events if e["type"] == "user_message"] == ["m1", "m2"]
    assert [e["replyTo"] for e in events if e["type"] == "message_start"] == [1, events[-5]["seq"]]
    await store.flush()
    (stored,) = store.load()  # what a restart restores
    assert [r.client_msg_id for r in stored.receipts] == ["m1", "m2"]


# -- a duplicate waiting while the first attempt's commit fails ----------------------------------


class ScriptedFlush(MemoryStore):
    """A memory store whose flushes resolve when the test says, failing or not."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting: list[asyncio.Future[None]] = []

    async def flush(self, urgent: bool = False) -> None:
        future = asyncio.get_running_loop().create_future()
        self.waiting.append(future)
        await future


async def test_a_duplicate_whose_first_attempt_failed_meanwhile_is_not_called_accepted() -> None:
    store = ScriptedFlush()
    bridge = ChatBridge(
        BridgeLimits(),
        FakeScheduler(),
        lambda session_id, settings: EchoAgent(session_id=session_id, chunk_delay=0.0),
        store=store,
    )
    bridge.create_session("s1")
    first = asyncio.ensure_future(bridge.send_durably("s1", "m1", "hi", None))
    await eventually(lambda: len(store.waiting) == 1)
    retry = asyncio.ensure_future(bridge.send_durably("s1", "m1", "hi", None))  # a client retry
    await eventually(lambda: len(store.waiting) == 2)
    # The first attempt's commit fails; the retry's barrier (later in the queue) succeeds.
    store.waiting[0].set_exception(StoreError("disk I/O error"))
    store.waiting[1].set_result(None)
    for attempt in (first, retry):
        with pytest.raises(BridgeError) as caught:
            await attempt
        assert caught.value.status == 503
    assert bridge.session("s1").log.receipt("m1") is None
    # The next retry writes the message again and, committed, is answered with its seq.
    again = asyncio.ensure_future(bridge.send_durably("s1", "m1", "hi", None))
    await eventually(lambda: len(store.waiting) == 3)
    store.waiting[2].set_result(None)
    result = await again
    assert (result.receipt.seq, result.duplicate) == (1, True)
    await bridge.shutdown()


# -- an answer's first text is shown before the agent is read on -------------------------------


class HeldCommits(ScriptedFlush):
    """Shows nothing until the test commits, like SQLite's writer thread (not at once)."""

    commits_immediately = False

    def commit_all(self) -> None:
        for future in self.waiting:
            if not future.done():
                future.set_result(None)


class AllAtOnceAgent(Agent):
    """A provider that sent its whole answer at once; notes what was shown when it is
    asked for its second chunk."""

    def __init__(self, shown_seq: Callable[[], int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.shown_seq = shown_seq
        self.shown_when_read_on: list[int] = []

    async def reply(self, message: UserMessage) -> AsyncIterator[str]:
        yield "first "
        self.shown_when_read_on.append(self.shown_seq())
        yield "second"


async def test_an_answers_first_text_is_shown_before_the_rest_is_read() -> None:
    """Time to first token: reading on would keep the loop busy while the text commits."""
    store = HeldCommits()
    agents: list[AllAtOnceAgent] = []

    def make_agent(session_id: str, settings: dict[str, Any]) -> AllAtOnceAgent:
        agents.append(AllAtOnceAgent(lambda: bridge.session(session_id).log.shown_seq))
        return agents[-1]

    bridge = ChatBridge(BridgeLimits(), FakeScheduler(), make_agent, store=store)
    bridge.create_session("s1")
    session = bridge.session("s1")
    log = session.log
    sent = asyncio.ensure_future(bridge.send_durably("s1", "m1", "hi", None))
    await eventually(lambda: log.last_seq >= 3)  # user_message, message_start, "first "
    for _ in range(20):  # nothing is committed yet, so nothing is shown: the agent waits
        await asyncio.sleep(0)
    assert (log.last_seq, log.shown_seq, agents[0].shown_when_read_on) == (3, 0, [])
    while not sent.done() or session.running or log.shown_seq < log.last_seq:
        store.commit_all()
        await asyncio.sleep(0)
    assert agents[0].shown_when_read_on == [3]  # read on once "first " was shown
    assert [e.type for e in log.after(0)][-2:] == ["block_delta", "message_end"]
    await bridge.shutdown()


# -- what the metrics say about commits ---------------------------------------------------------


async def test_failed_and_committed_transactions_show_in_the_metrics(
    api: Api, bridge: ChatBridge, jp_fetch: Any
) -> None:
    from .test_metrics import Delta, scrape

    store = bridge.store
    assert isinstance(store, SqliteStore)
    await api.ok("POST", "sessions", body={"sessionId": "s1"})
    commit = store._commit
    failing, failed, committed = [True], [0], [0]

    def seam(conn: sqlite3.Connection, writes: Any) -> None:
        if failing[0]:
            failed[0] += 1
            raise sqlite3.OperationalError("disk I/O error")
        commit(conn, writes)
        committed[0] += bool(writes)  # an empty batch (a barrier alone) is no transaction

    store._commit = seam  # type: ignore[method-assign]
    before = await scrape(jp_fetch)
    body = {"sessionId": "s1", "clientMsgId": "m1", "text": "hello"}
    assert (await api("POST", "send", body=body))[0] == 503
    failing[0] = False
    assert (await api("POST", "send", body=body))[0] == 200
    await store.flush()
    delta = Delta(before, await scrape(jp_fetch))
    assert failed[0] >= 1 and committed[0] >= 1
    assert delta("chatbridge_store_commit_failures_total") == failed[0]
    assert delta("chatbridge_store_commit_seconds_count") == committed[0]
    assert delta("chatbridge_sends_total", outcome="refused", code="busy") == 1
    assert delta("chatbridge_sends_total", outcome="duplicate", code="") == 1
