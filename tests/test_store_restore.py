"""Restore: a new `ChatBridge` rebuilt from what an earlier one stored, in one process,
and the HTTP surface of the store (settings; "accepted" meaning durable). The
real-process restarts are in test_restart.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from jupyter_chatbridge.clock import FakeScheduler
from jupyter_chatbridge.server.agents import Agent, EchoAgent, UserMessage
from jupyter_chatbridge.server.bridge import (
    INTERRUPTED_MESSAGE,
    BridgeError,
    BridgeLimits,
    ChatBridge,
)
from jupyter_chatbridge.server.store import SessionStore, StoreError

from .store_support import StoreFactory, by_id, store_factory
from .support import Api, eventually


@pytest.fixture(params=["memory", "sqlite"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """One process's stores: a Redis store restores across processes instead (the
    relay and leases; test_redis_servers.py)."""
    yield from store_factory(request.param, tmp_path)


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
    # Done, and committed (events are shown once the store has them).
    await eventually(
        lambda: (
            not session.running
            and not session.pending
            and session.log.shown_seq == session.log.last_seq
        )
    )
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

    async def flush(self, urgent: bool = False) -> None:
        if not self.healed:
            raise StoreError("chatbridge session store /x: could not save 1 writes (disk full)")
        await self.store.flush(urgent)


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
