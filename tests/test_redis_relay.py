"""The relay of one process that lags behind Redis, or fails on what it read: two bridges
in this process on one real Redis, one of them held back or broken at its seam (`_ingest`)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from jupyter_chatbridge.clock import FakeScheduler
from jupyter_chatbridge.server import leases
from jupyter_chatbridge.server.agents import EchoAgent
from jupyter_chatbridge.server.bridge import ChatBridge
from jupyter_chatbridge.server.limits import BridgeLimits
from jupyter_chatbridge.server.relay import RedisRelay
from jupyter_chatbridge.server.sessions import SendResult
from jupyter_chatbridge.server.store.redis import RedisStore

from .support import eventually


class HeldReads:
    """Holds what a relay read from Redis until `release`: a process whose relay lags."""

    def __init__(self, relay: RedisRelay) -> None:
        self._ingest = relay._ingest
        self.held: list[tuple[str, Any]] = []
        self.holding = True
        relay._ingest = self._take  # type: ignore[method-assign]

    def _take(self, session_id: str, events: Any) -> None:
        if self.holding:
            self.held.append((session_id, events))
        else:
            self._ingest(session_id, events)

    def release(self) -> None:
        self.holding = False
        for args in self.held:
            self._ingest(*args)
        self.held.clear()


class Frames:
    """A stream that keeps what it is sent (a client's event stream)."""

    def __init__(self) -> None:
        self.payloads: list[bytes] = []

    def send(self, frame_id: int | None, payload: bytes) -> None:
        self.payloads.append(payload)

    def ping(self) -> None:
        pass

    def kick(self) -> None:
        pass

    def close(self) -> None:
        pass

    def seqs(self) -> list[int]:
        seqs = []
        for payload in self.payloads:
            data = payload.decode().split("data: ", 1)[-1]
            with_seq = json.loads(data)
            if "seq" in with_seq:
                seqs.append(with_seq["seq"])
        return seqs


@pytest.fixture
def bridges(redis_url: str, jp_asyncio_loop: Any) -> Iterator[Callable[[], ChatBridge]]:
    made: list[ChatBridge] = []

    def make() -> ChatBridge:
        bridge = ChatBridge(
            BridgeLimits(),
            FakeScheduler(),
            lambda session_id, settings: EchoAgent(session_id=session_id, chunk_delay=0.0),
            store=RedisStore(redis_url),
        )
        bridge.start_restored_runs()
        made.append(bridge)
        return bridge

    yield make
    for bridge in made:
        jp_asyncio_loop.run_until_complete(bridge.shutdown())
        assert isinstance(bridge.store, RedisStore)
        jp_asyncio_loop.run_until_complete(bridge.store.aclose())


async def test_a_watch_after_a_seq_this_process_has_not_read_yet_never_repeats_it(
    bridges: Callable[[], ChatBridge],
) -> None:
    a, b = bridges(), bridges()
    assert a.relay is not None and b.relay is not None
    lagging = HeldReads(b.relay)
    a.create_session("s1")
    await eventually(lambda: "s1" in b.sessions)  # b holds it, but reads none of its events
    await a.send_durably("s1", "m1", "one", None)
    await eventually(lambda: a.history("s1", 0, None)[1] >= 5)  # one answered on a
    seen = a.history("s1", 0, None)[1]
    assert b.session("s1").log.shown_seq == 0

    # The client that showed `seen` on a moves to b and watches after it.
    frames = Frames()
    welcome = b.open_stream(None, "alice", None, frames)
    connection = b.connection_for(welcome["connectionId"], "alice")
    watching = asyncio.ensure_future(b.reached("s1", seen))
    await asyncio.sleep(0)
    assert not watching.done()  # b has not shown that far: the watch waits for it
    lagging.release()
    await watching
    b.watch(connection, "s1", seen)
    await a.send_durably("s1", "m2", "two", None)
    await eventually(lambda: bool(frames.seqs()) and frames.seqs()[-1] >= seen + 5)
    assert frames.seqs() == list(range(seen + 1, seen + 6))


async def test_a_relay_that_failed_on_what_it_read_says_so_and_reads_on(
    bridges: Callable[[], ChatBridge], caplog: pytest.LogCaptureFixture
) -> None:
    a, b = bridges(), bridges()
    assert b.relay is not None
    ingest = b.relay._ingest
    failures = [RuntimeError("a bug in handling one batch")]

    def flaky(session_id: str, events: Any) -> None:
        if failures:
            raise failures.pop()
        ingest(session_id, events)

    b.relay._ingest = flaky  # type: ignore[method-assign]
    a.create_session("s1")
    await eventually(lambda: "s1" in b.sessions)
    await a.send_durably("s1", "m1", "one", None)
    await eventually(lambda: not failures)
    assert "relay could not handle" in caplog.text and "a bug in handling" in caplog.text
    # The relay reads on (that batch is lost to the bug, loudly): the next events arrive.
    await a.send_durably("s1", "m2", "two", None)
    await eventually(lambda: b.session("s1").log.shown_seq == a.history("s1", 0, None)[1] >= 7)


def _answers(bridge: ChatBridge, session_id: str) -> list[int]:
    """The `replyTo` of each answer the session shows, in order."""
    events, _ = bridge.history(session_id, 0, None)
    return [json.loads(e.data)["replyTo"] for e in events if e.type == "message_start"]


async def _one_answer(
    bridges: Callable[[], ChatBridge],
) -> tuple[ChatBridge, ChatBridge, SendResult, str | None]:
    """Two processes, s1 sent "one" on the first and answered: (the process that holds
    the lease now, the other, the send, the lease's token as Redis holds it)."""
    a, b = bridges(), bridges()
    assert isinstance(a.store, RedisStore)
    a.create_session("s1")
    await eventually(lambda: "s1" in b.sessions)
    first = await a.send_durably("s1", "m1", "one", None)
    await eventually(lambda: len(_answers(a, "s1")) == 1 and not a.session("s1").running)

    def lingering(bridge: ChatBridge) -> bool:  # its run waits for more, on its clock
        assert isinstance(bridge.scheduler, FakeScheduler)
        return leases.LINGER in bridge.scheduler.due_in()

    # Whichever took the lease; once its run waits (a loser may still be letting go).
    await eventually(lambda: lingering(a) or lingering(b))
    owner, other = (a, b) if lingering(a) else (b, a)
    return owner, other, first, a.store.client.get(a.store.keys.lease("s1"))


async def test_a_message_that_comes_while_a_run_waits_for_more_is_answered_by_that_run(
    bridges: Callable[[], ChatBridge],
) -> None:
    # The fake clock never reaches the end of `leases.LINGER` here: if the waiting run
    # were not woken, the second message would wait for it (and time the test out).
    owner, other, first, holder = await _one_answer(bridges)
    assert holder is not None  # kept after the answer, for the next message

    second = await other.send_durably("s1", "m2", "two", None)  # the other process's client
    both = [first.receipt.seq, second.receipt.seq]
    await eventually(lambda: _answers(owner, "s1") == both and _answers(other, "s1") == both)
    assert isinstance(owner.store, RedisStore)
    assert owner.store.client.get(owner.store.keys.lease("s1")) == holder  # under one lease


async def test_a_run_lets_go_of_the_lease_once_no_message_came_for_a_while(
    bridges: Callable[[], ChatBridge],
) -> None:
    owner, other, _, holder = await _one_answer(bridges)
    assert holder is not None and isinstance(owner.store, RedisStore)
    owner.scheduler.advance(leases.LINGER)
    lease = owner.store.keys.lease("s1")
    await eventually(lambda: owner.store.client.get(lease) is None and not owner.runner.runs)

    # Another process may take it now: the next message is answered all the same.
    second = await other.send_durably("s1", "m2", "two", None)
    await eventually(lambda: _answers(other, "s1")[-1:] == [second.receipt.seq])


async def test_a_process_that_stops_lets_go_of_the_lease_it_keeps(
    bridges: Callable[[], ChatBridge],
) -> None:
    # Else the other processes would wait for it to expire before answering the session.
    owner, other, _, holder = await _one_answer(bridges)
    assert holder is not None and isinstance(other.store, RedisStore)
    await owner.shutdown()
    assert other.store.client.get(other.store.keys.lease("s1")) is None
    second = await other.send_durably("s1", "m2", "two", None)
    await eventually(lambda: _answers(other, "s1")[-1:] == [second.receipt.seq])
