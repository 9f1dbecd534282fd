"""The send outbox: ordered, one request in flight, same clientMsgId on every retry.

Time is a FakeScheduler: a test advances it and then lets the loop run; nothing sleeps.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from jupyter_chatbridge.client.outbox import (
    Outbox,
    OutboxClosed,
    OutboxEvent,
    OutboxFull,
    SendResponse,
)
from jupyter_chatbridge.clock import FakeScheduler


async def settle(rounds: int = 10) -> None:
    """Let every ready callback and task step run (no time passes)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def accepted(seq: int, duplicate: bool = False) -> SendResponse:
    return SendResponse(
        202 if not duplicate else 200, {"accepted": True, "seq": seq, "duplicate": duplicate}
    )


def error(status: int, code: str = "x", retry_after: float | None = None) -> SendResponse:
    return SendResponse(status, {"error": f"failed with {status}", "code": code}, retry_after)


class FakeServer:
    """An instrumented `post`: records calls, answers from a script, counts concurrency.

    Each call takes the next scripted answer (a SendResponse or an exception to raise);
    once the script is empty it accepts with the next seq. With `hold=True` every call
    waits until the test releases it, so a test sees what is in flight.
    """

    def __init__(self, hold: bool = False) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.script: deque[SendResponse | BaseException] = deque()
        self.hold = hold
        self.in_flight = 0
        self.max_in_flight = 0
        self._gates: deque[asyncio.Future[None]] = deque()
        self._seq = itertools.count(1)

    async def post(self, session_id: str, client_msg_id: str, text: str) -> SendResponse:
        self.calls.append((session_id, client_msg_id, text))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.hold:
                gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                self._gates.append(gate)
                await gate
            answer = self.script.popleft() if self.script else accepted(next(self._seq))
            if isinstance(answer, BaseException):
                raise answer
            return answer
        finally:
            self.in_flight -= 1

    def release(self) -> None:
        self._gates.popleft().set_result(None)

    @property
    def texts(self) -> list[str]:
        return [text for _, _, text in self.calls]


class Recorder:
    def __init__(self) -> None:
        self.events: list[OutboxEvent] = []

    def __call__(self, event: OutboxEvent) -> None:
        self.events.append(event)

    def of(self, type_: str) -> list[OutboxEvent]:
        return [e for e in self.events if e.type == type_]


Make = Callable[..., tuple[Outbox, FakeScheduler, Recorder]]


@pytest.fixture
def make(jp_asyncio_loop: asyncio.AbstractEventLoop) -> Iterator[Make]:
    """Build outboxes on a fake clock with ids m-1, m-2, ...; all are closed at teardown,
    so a failing test cannot leave a drain task pending in the loop."""
    created: list[Outbox] = []

    def factory(
        server: FakeServer, listener: Callable[[OutboxEvent], None] | None = None, **kwargs: Any
    ) -> tuple[Outbox, FakeScheduler, Recorder]:
        clock = FakeScheduler()
        recorder = Recorder()
        ids = (f"m-{n}" for n in itertools.count(1))
        outbox = Outbox(
            server.post, clock, listener or recorder, new_id=lambda: next(ids), **kwargs
        )
        created.append(outbox)
        return outbox, clock, recorder

    yield factory
    for outbox in created:
        jp_asyncio_loop.run_until_complete(outbox.aclose())


async def test_messages_are_delivered_in_order_with_receipts(make: Make) -> None:
    server = FakeServer()
    outbox, _, events = make(server)
    ids = [outbox.enqueue("s1", f"msg {n}") for n in range(1, 4)]
    assert ids == ["m-1", "m-2", "m-3"]
    assert [e.type for e in events.events] == ["send_pending"] * 3  # synchronously
    await outbox.drain()
    assert server.texts == ["msg 1", "msg 2", "msg 3"]
    done = events.of("send_accepted")
    assert [(e.client_msg_id, e.seq, e.duplicate, e.attempt) for e in done] == [
        ("m-1", 1, False, 1),
        ("m-2", 2, False, 1),
        ("m-3", 3, False, 1),
    ]
    assert len(outbox) == 0
    await outbox.aclose()


async def test_duplicate_receipt_is_accepted_as_duplicate(make: Make) -> None:
    server = FakeServer()
    server.script.append(accepted(9, duplicate=True))
    outbox, _, events = make(server)
    outbox.enqueue("s1", "again", client_msg_id="my-id")
    await outbox.drain()
    (done,) = events.of("send_accepted")
    assert (done.client_msg_id, done.seq, done.duplicate, done.status) == ("my-id", 9, True, 200)
    await outbox.aclose()


async def test_a_500_on_the_first_message_holds_back_the_others(make: Make) -> None:
    server = FakeServer()
    server.script.append(error(500))
    outbox, clock, events = make(server)
    for n in range(1, 4):
        outbox.enqueue("s1", f"msg {n}")
    await settle()
    assert server.texts == ["msg 1"]
    (failed,) = events.of("send_failed")
    assert failed.will_retry is True
    assert failed.status == 500
    assert failed.retry_in == 3.0
    assert outbox.pending == ["m-1", "m-2", "m-3"]

    clock.advance(2.9)
    await settle()
    assert server.texts == ["msg 1"], "message 2 must not overtake message 1"

    clock.advance(0.1)
    await settle()
    assert server.texts == ["msg 1", "msg 1", "msg 2", "msg 3"]
    assert [e.client_msg_id for e in events.of("send_accepted")] == ["m-1", "m-2", "m-3"]
    await outbox.aclose()


async def test_client_msg_id_is_identical_on_every_retry(make: Make) -> None:
    server = FakeServer()
    server.script.extend([error(503), OSError("reset"), error(429)])
    outbox, clock, events = make(server)
    msg_id = outbox.enqueue("s1", "hello")
    for _ in range(3):
        await settle()
        clock.advance(3.0)
    await settle()
    assert server.calls == [("s1", msg_id, "hello")] * 4
    assert [e.attempt for e in events.of("send_failed")] == [1, 2, 3]
    (done,) = events.of("send_accepted")
    assert (done.client_msg_id, done.attempt) == (msg_id, 4)
    await outbox.aclose()


async def test_retry_after_is_honoured_on_the_fake_clock(make: Make) -> None:
    server = FakeServer()
    server.script.append(error(429, "busy", retry_after=10.0))
    outbox, clock, events = make(server)
    outbox.enqueue("s1", "hi")
    await settle()
    (failed,) = events.of("send_failed")
    assert (failed.will_retry, failed.retry_in, failed.error) == (
        True,
        10.0,
        "failed with 429 (busy)",
    )

    clock.advance(9.99)
    await settle()
    assert len(server.calls) == 1, "posted before Retry-After elapsed"

    clock.advance(0.01)
    await settle()
    assert len(server.calls) == 2
    assert len(events.of("send_accepted")) == 1
    await outbox.aclose()


async def test_three_retries_then_will_retry_false_and_dropped(make: Make) -> None:
    server = FakeServer()
    server.script.extend([error(502)] * 4)
    outbox, clock, events = make(server)
    outbox.enqueue("s1", "doomed")
    outbox.enqueue("s1", "next")
    for _ in range(10):
        await settle()
        clock.advance(3.0)
    await settle()
    assert server.texts == ["doomed"] * 4 + ["next"]
    failed = events.of("send_failed")
    assert [(e.will_retry, e.attempt) for e in failed] == [
        (True, 1),
        (True, 2),
        (True, 3),
        (False, 4),
    ]
    assert failed[-1].retry_in is None
    assert outbox.failed == ["m-1"]
    assert [e.client_msg_id for e in events.of("send_accepted")] == ["m-2"]
    assert clock.pending == 0
    await outbox.aclose()


@pytest.mark.parametrize("status", [400, 403, 404, 413])
async def test_other_4xx_is_final_at_once_with_a_single_post(status: int, make: Make) -> None:
    server = FakeServer()
    server.script.append(error(status, "session_unknown"))
    outbox, clock, events = make(server)
    outbox.enqueue("s1", "x")
    outbox.enqueue("s1", "y")
    await outbox.drain()
    assert server.texts == ["x", "y"]
    (failed,) = events.of("send_failed")
    assert (failed.will_retry, failed.status, failed.attempt) == (False, status, 1)
    assert clock.pending == 0
    await outbox.aclose()


@pytest.mark.parametrize("status", [408, 425, 429, 500, 503])
async def test_transient_statuses_are_retried(status: int, make: Make) -> None:
    server = FakeServer()
    server.script.append(error(status))
    outbox, clock, events = make(server)
    outbox.enqueue("s1", "x")
    await settle()
    assert events.of("send_failed")[0].will_retry is True
    clock.advance(3.0)
    await outbox.drain()
    assert server.texts == ["x", "x"]


async def test_network_error_is_retried(make: Make) -> None:
    server = FakeServer()
    server.script.extend([ConnectionRefusedError(111, "Connection refused"), TimeoutError()])
    outbox, clock, events = make(server)
    outbox.enqueue("s1", "x")
    await settle()
    first = events.of("send_failed")[0]
    assert (first.will_retry, first.status) == (True, None)
    assert first.error is not None and "ConnectionRefusedError" in first.error
    clock.advance(3.0)
    await settle()
    clock.advance(3.0)
    await outbox.drain()
    assert server.texts == ["x"] * 3
    assert len(events.of("send_accepted")) == 1


async def test_exception_carrying_a_4xx_code_is_final(make: Make) -> None:
    class HTTPClientError(Exception):
        code = 404

    server = FakeServer()
    server.script.append(HTTPClientError("HTTP 404: Not Found"))
    outbox, _, events = make(server)
    outbox.enqueue("s1", "x")
    await outbox.drain()
    (failed,) = events.of("send_failed")
    assert (failed.will_retry, failed.status) == (False, 404)
    assert len(server.calls) == 1


async def test_the_101st_message_is_refused_and_the_first_100_delivered(make: Make) -> None:
    server = FakeServer(hold=True)
    outbox, _, events = make(server)
    for n in range(100):
        outbox.enqueue("s1", f"m{n}")
    with pytest.raises(OutboxFull, match="100"):
        outbox.enqueue("s1", "one too many")
    assert len(outbox) == 100
    assert len(events.of("send_pending")) == 100
    for _ in range(100):
        await settle(3)
        server.release()
    await outbox.drain()
    assert server.texts == [f"m{n}" for n in range(100)]
    assert len(events.of("send_accepted")) == 100
    # room again once delivered
    outbox.enqueue("s1", "later")
    await settle(3)
    server.release()
    await outbox.drain()
    assert server.texts[-1] == "later"
    await outbox.aclose()


async def test_only_one_post_is_in_flight_at_any_time(make: Make) -> None:
    server = FakeServer(hold=True)
    server.script.extend([error(500), accepted(1), error(429, retry_after=1.0)])
    outbox, clock, _ = make(server)
    for n in range(5):
        outbox.enqueue("s1", f"m{n}")
    for _ in range(20):
        await settle()
        assert server.in_flight <= 1
        if server._gates:
            server.release()
        clock.advance(3.0)
    await outbox.drain()
    assert server.max_in_flight == 1
    assert server.texts == ["m0", "m0", "m1", "m1", "m2", "m3", "m4"]


async def test_retry_resends_a_final_failure_with_the_same_id_and_a_fresh_budget(
    make: Make,
) -> None:
    server = FakeServer()
    server.script.extend([error(500)] * 4 + [error(500)])
    outbox, clock, events = make(server, max_retries=3)
    msg_id = outbox.enqueue("s1", "hello")
    for _ in range(5):
        await settle()
        clock.advance(3.0)
    assert events.of("send_failed")[-1].will_retry is False
    assert len(server.calls) == 4

    outbox.retry(msg_id)
    assert events.events[-1].type == "send_pending"
    assert outbox.failed == []
    await settle()
    # one more 500, then a full budget is left: it retries instead of giving up
    assert events.of("send_failed")[-1].will_retry is True
    clock.advance(3.0)
    await outbox.drain()
    assert {call[1] for call in server.calls} == {msg_id}
    assert len(server.calls) == 6
    assert events.of("send_accepted")[-1].client_msg_id == msg_id
    with pytest.raises(KeyError):
        outbox.retry(msg_id)
    await outbox.aclose()


async def test_retry_of_an_unknown_id_raises_key_error(make: Make) -> None:
    outbox, _, _ = make(FakeServer())
    with pytest.raises(KeyError):
        outbox.retry("never-sent")


async def test_remembered_failures_are_bounded(make: Make) -> None:
    server = FakeServer()
    server.script.extend([error(500)] * 5)
    outbox, _, _ = make(server, max_failed=3, max_retries=0)
    for n in range(5):
        outbox.enqueue("s1", f"m{n}")
    await outbox.drain()
    assert outbox.failed == ["m-3", "m-4", "m-5"]
    with pytest.raises(KeyError):
        outbox.retry("m-1")
    await outbox.aclose()


async def test_listener_may_retry_from_inside_a_failure_event(make: Make) -> None:
    server = FakeServer()
    server.script.append(error(503))
    seen: list[OutboxEvent] = []

    def listener(event: OutboxEvent) -> None:
        seen.append(event)
        if event.type == "send_failed" and len(seen) < 5:
            outbox.retry(event.client_msg_id)

    outbox, _, _ = make(server, listener, max_retries=0)
    outbox.enqueue("s1", "x")
    await outbox.drain()
    assert [e.type for e in seen] == [
        "send_pending",
        "send_failed",
        "send_pending",
        "send_accepted",
    ]
    await outbox.aclose()


async def test_a_failing_listener_does_not_stop_delivery(
    caplog: pytest.LogCaptureFixture, make: Make
) -> None:
    server = FakeServer()

    def listener(event: OutboxEvent) -> None:
        raise RuntimeError("UI bug")

    outbox, _, _ = make(server, listener)
    outbox.enqueue("s1", "a")
    outbox.enqueue("s1", "b")
    await outbox.drain()
    assert server.texts == ["a", "b"]
    assert "outbox listener failed" in caplog.text
    await outbox.aclose()


async def test_close_leaves_nothing_running(make: Make) -> None:
    before = asyncio.all_tasks()
    server = FakeServer()
    server.script.append(error(503))
    outbox, clock, _ = make(server)
    outbox.enqueue("s1", "x")
    outbox.enqueue("s1", "y")
    await settle()
    assert clock.pending == 1  # waiting for the retry
    assert len(asyncio.all_tasks() - before) == 1
    outbox.close()
    outbox.close()  # idempotent
    await settle()
    assert asyncio.all_tasks() - before == set()
    assert clock.pending == 0
    assert len(outbox) == 0
    clock.advance(60.0)
    await settle()
    assert len(server.calls) == 1
    with pytest.raises(OutboxClosed):
        outbox.enqueue("s1", "z")
    await outbox.drain()  # returns at once


async def test_close_while_a_post_is_in_flight(make: Make) -> None:
    before = asyncio.all_tasks()
    server = FakeServer(hold=True)
    outbox, _, events = make(server)
    outbox.enqueue("s1", "x")
    await settle()
    assert server.in_flight == 1
    await outbox.aclose()
    assert asyncio.all_tasks() - before == set()
    assert server.in_flight == 0
    assert events.of("send_accepted") == []


async def test_async_with_closes(make: Make) -> None:
    before = asyncio.all_tasks()
    server = FakeServer(hold=True)
    async with make(server)[0] as outbox:
        outbox.enqueue("s1", "x")
        await settle()
    assert outbox.closed
    assert asyncio.all_tasks() - before == set()


async def test_no_task_lingers_once_the_queue_is_empty(make: Make) -> None:
    before = asyncio.all_tasks()
    outbox, clock, _ = make(FakeServer())
    outbox.enqueue("s1", "x")
    await outbox.drain()
    await settle()
    assert asyncio.all_tasks() - before == set()
    assert clock.pending == 0
    # a later message starts delivery again
    outbox.enqueue("s1", "y")
    await outbox.drain()
    await outbox.aclose()


def test_enqueue_without_a_running_loop_fails_cleanly() -> None:
    events = Recorder()
    outbox = Outbox(FakeServer().post, FakeScheduler(), events)
    with pytest.raises(RuntimeError):
        outbox.enqueue("s1", "x")
    assert len(outbox) == 0
    assert events.events == []


async def test_invalid_ids_are_refused_before_queueing(make: Make) -> None:
    outbox, _, events = make(FakeServer())
    with pytest.raises(ValueError):
        outbox.enqueue("no spaces allowed", "x")
    with pytest.raises(ValueError):
        outbox.enqueue("s1", "x", client_msg_id="has space")
    assert events.events == []
    assert len(outbox) == 0


def test_event_to_dict_uses_wire_keys_without_nones() -> None:
    event = OutboxEvent(
        "send_failed", "s1", "m-1", "hi", will_retry=True, attempt=2, status=503, retry_in=3.0
    )
    assert event.to_dict() == {
        "type": "send_failed",
        "sessionId": "s1",
        "clientMsgId": "m-1",
        "text": "hi",
        "willRetry": True,
        "attempt": 2,
        "status": 503,
        "retryIn": 3.0,
    }
    accepted_event = OutboxEvent("send_accepted", "s1", "m-1", "hi", seq=4, duplicate=False)
    assert accepted_event.to_dict()["duplicate"] is False
    assert accepted_event.to_dict()["seq"] == 4


def test_default_client_msg_ids_are_unique_and_valid() -> None:
    from jupyter_chatbridge.client.outbox import new_client_msg_id
    from jupyter_chatbridge.protocol import is_valid_client_msg_id

    ids = {new_client_msg_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(is_valid_client_msg_id(i) and i.startswith("m-") for i in ids)


async def test_retry_on_a_full_outbox_keeps_the_failure_retryable(make: Make) -> None:
    server = FakeServer()
    server.script.append(error(503))
    outbox, _, _ = make(server, max_queued=2, max_retries=0)
    failed_id = outbox.enqueue("s1", "bad")
    await outbox.drain()
    server.hold = True
    outbox.enqueue("s1", "a")
    outbox.enqueue("s1", "b")
    with pytest.raises(OutboxFull):
        outbox.retry(failed_id)
    assert outbox.failed == [failed_id]
    await settle(3)
    server.release()
    await settle(3)
    outbox.retry(failed_id)  # room again
    assert outbox.pending == ["m-3", failed_id]


@pytest.mark.parametrize("status", [400, 404, 413])
async def test_a_refused_message_is_final_and_never_offered_a_retry(
    status: int, make: Make
) -> None:
    # The rules' one eligibility rule: only a transient failure that ran out of retries
    # may be retried by the user; a message the server refuses stays refused.
    server = FakeServer()
    server.script.append(error(status))
    outbox, _, events = make(server)
    msg_id = outbox.enqueue("s1", "bad")
    await outbox.drain()
    final = events.of("send_failed")[-1]
    assert (final.will_retry, final.retryable) == (False, False)
    assert outbox.failed == []
    with pytest.raises(KeyError):
        outbox.retry(msg_id)
    await outbox.aclose()


async def test_a_transient_failure_out_of_retries_is_offered_a_retry(make: Make) -> None:
    server = FakeServer()
    server.script.extend([error(502)] * 2)
    outbox, clock, events = make(server, max_retries=1)
    msg_id = outbox.enqueue("s1", "x")
    await settle()
    clock.advance(3.0)
    await outbox.drain()
    final = events.of("send_failed")[-1]
    assert (final.will_retry, final.retryable, final.attempt) == (False, True, 2)
    assert outbox.failed == [msg_id]
    await outbox.aclose()
