"""Stop on a real in-process server: REST and WebSocket, with `EchoAgent`.

EchoAgent is configured with a chunk delay of an hour, so an answer is always
mid-stream (after its "Echo: " prefix) when the test stops it: nothing waits
for time, the test waits for events.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from jupyter_chatbridge.server.bridge import ChatBridge

from .agents import HistoryAgent
from .support import Api, EventStream, StreamFactory, new_cid

STALLED = pytest.mark.chatbridge(agent={"chunk_delay": 3600.0})
Events = list[dict[str, Any]]


async def _watching(api: Api, streams: StreamFactory, sid: str = "s1") -> EventStream:
    await api.ok("POST", "sessions", body={"sessionId": sid})
    cid = new_cid()
    stream = await streams.open(cid)
    await api.ok("POST", "watch", body={"sessionId": sid}, headers={"X-Connection-ID": cid})
    return stream


async def _send(api: Api, text: str, cmid: str, sid: str = "s1") -> int:
    receipt = await api.ok(
        "POST", "send", body={"sessionId": sid, "clientMsgId": cmid, "text": text}
    )
    return int(receipt["seq"])


def _answer(events: Events, message_id: str) -> Events:
    return [e for e in events if e.get("messageId") == message_id]


def _has(kind: str, message_id: str, **fields: Any) -> Any:
    def check(stream: EventStream) -> bool:
        return any(
            e["type"] == kind and e.get("messageId") == message_id and fields.items() <= e.items()
            for e in stream.session_events("s1")
        )

    return check


@STALLED
async def test_stop_mid_answer_ends_it_stopped_with_its_partial_text(
    api: Api, streams: StreamFactory, bridge: ChatBridge
) -> None:
    stream = await _watching(api, streams)
    seq = await _send(api, "hello world", "c1")
    mid = f"m{seq}"
    await stream.wait_for(_has("block_delta", mid, text="Echo: "))

    assert await api.ok("POST", "sessions", "s1", "stop") == {
        "sessionId": "s1",
        "stopped": mid,
        "reason": "stopped",
        "messageId": mid,
    }
    # The 200 came after the end was committed: it is already in history.
    history = (await api.ok("GET", "sessions", "s1", "events"))["events"]
    assert [(e["type"], e.get("text"), e.get("reason")) for e in _answer(history, mid)] == [
        ("message_start", None, None),
        ("block_delta", "Echo: ", None),
        ("message_end", None, "stopped"),
    ]
    await stream.wait_for(_has("message_end", mid, reason="stopped"))
    assert not (await api.ok("GET", "sessions", "s1"))["running"]
    assert not bridge.runner.runs  # nothing left running


@STALLED
async def test_a_repeated_stop_is_harmless_and_says_nothing_was_running(
    api: Api, streams: StreamFactory
) -> None:
    stream = await _watching(api, streams)
    mid = f"m{await _send(api, 'hello', 'c1')}"
    await stream.wait_for(_has("block_delta", mid))
    assert (await api.ok("POST", "sessions", "s1", "stop"))["stopped"] == mid
    last_seq = (await api.ok("GET", "sessions", "s1"))["lastSeq"]

    again = await api.ok("POST", "sessions", "s1", "stop", body={})
    assert again == {"sessionId": "s1", "stopped": None, "reason": "not_running", "messageId": None}
    named = await api.ok("POST", "sessions", "s1", "stop", body={"messageId": mid})
    assert named == {
        "sessionId": "s1",
        "stopped": None,
        "reason": "already_ended",
        "messageId": mid,
    }
    assert (await api.ok("GET", "sessions", "s1"))["lastSeq"] == last_seq  # changed nothing
    ends = [e for e in stream.session_events("s1") if e["type"] == "message_end"]
    assert len(ends) == 1


async def test_stopping_an_answer_that_completed_changes_nothing_and_says_so(
    api: Api, streams: StreamFactory
) -> None:
    stream = await _watching(api, streams)  # EchoAgent without delay: answers at once
    mid = f"m{await _send(api, 'hi', 'c1')}"
    await stream.wait_for(_has("message_end", mid, reason="complete"))
    last_seq = (await api.ok("GET", "sessions", "s1"))["lastSeq"]

    named = await api.ok("POST", "sessions", "s1", "stop", body={"messageId": mid})
    assert (named["stopped"], named["reason"]) == (None, "already_ended")
    running = await api.ok("POST", "sessions", "s1", "stop")
    assert (running["stopped"], running["reason"]) == (None, "not_running")
    queued_or_unknown = await api.ok("POST", "sessions", "s1", "stop", body={"messageId": "m99"})
    assert (queued_or_unknown["stopped"], queued_or_unknown["reason"]) == (None, "not_running")
    assert (await api.ok("GET", "sessions", "s1"))["lastSeq"] == last_seq


@STALLED
async def test_messages_queued_behind_a_stopped_answer_are_still_answered(
    api: Api, streams: StreamFactory
) -> None:
    stream = await _watching(api, streams)
    first = await _send(api, "one", "c1")
    second = await _send(api, "two", "c2")
    await stream.wait_for(_has("block_delta", f"m{first}"))

    assert (await api.ok("POST", "sessions", "s1", "stop"))["stopped"] == f"m{first}"
    # The queue goes on: the next message's answer starts, in order, after the stopped end.
    await stream.wait_for(_has("block_delta", f"m{second}", text="Echo: "))
    named = await api.ok("POST", "sessions", "s1", "stop", body={"messageId": f"m{second}"})
    assert named["stopped"] == f"m{second}"
    await stream.wait_for(_has("message_end", f"m{second}", reason="stopped"))
    kinds = [
        (e["type"], e.get("messageId"), e.get("replyTo"), e.get("reason"))
        for e in stream.session_events("s1")
        if e["type"] in {"message_start", "message_end"}
    ]
    assert kinds == [
        ("message_start", f"m{first}", first, None),
        ("message_end", f"m{first}", None, "stopped"),
        ("message_start", f"m{second}", second, None),
        ("message_end", f"m{second}", None, "stopped"),
    ]


@pytest.mark.parametrize(
    ("raw_body", "fragment"),
    [
        ('{"messageId": 5}', "messageId"),
        ('{"messageId": "has space"}', "messageId"),
        ("[1]", "JSON object"),
        ("{", "not valid JSON"),
    ],
)
async def test_a_bad_stop_body_is_400_and_changes_nothing(
    api: Api, raw_body: str, fragment: str
) -> None:
    await api.ok("POST", "sessions", body={"sessionId": "s1"})
    status, body = await api("POST", "sessions", "s1", "stop", raw_body=raw_body)
    assert status == 400 and body["code"] == "bad_request" and fragment in body["error"]
    assert (await api.ok("GET", "sessions", "s1"))["lastSeq"] == 0


async def test_stop_of_an_unknown_session_is_404_session_unknown(api: Api) -> None:
    status, body = await api("POST", "sessions", "ghost", "stop")
    assert (status, body["code"]) == (404, "session_unknown")


@STALLED
async def test_a_stop_frame_on_the_websocket_stops_the_answer_and_is_answered(
    api: Api, jp_ws_fetch: Any
) -> None:
    await api.ok("POST", "sessions", body={"sessionId": "s1"})
    ws = await jp_ws_fetch("chatbridge", "api", "sessions", "s1", "ws")
    received: Events = []

    async def read_until(predicate: Any) -> dict[str, Any]:
        while True:
            message = await ws.read_message()
            assert message is not None, (ws.close_code, ws.close_reason)
            received.append(json.loads(message))
            if predicate(received[-1]):
                return received[-1]

    ws.write_message(json.dumps({"type": "send", "clientMsgId": "c1", "text": "hello world"}))
    await read_until(lambda f: f.get("type") == "block_delta")
    ws.write_message(json.dumps({"type": "stop"}))
    stopped = await read_until(lambda f: f.get("type") == "stopped")
    assert stopped == {
        "type": "stopped",
        "sessionId": "s1",
        "stopped": "m1",
        "reason": "stopped",
        "messageId": "m1",
    }
    # The end was published before the answer to the frame.
    assert {"type": "message_end", "sessionId": "s1", "seq": 4, "messageId": "m1"} | {
        "reason": "stopped"
    } in received
    ws.write_message(json.dumps({"type": "stop", "messageId": "m1"}))
    again = await read_until(lambda f: f.get("type") == "stopped")
    assert (again["stopped"], again["reason"]) == (None, "already_ended")
    ws.write_message(json.dumps({"type": "stop", "messageId": 7}))
    refused = await read_until(lambda f: f.get("type") == "nack")
    assert refused["code"] == "bad_request"
    ws.close()


@pytest.mark.chatbridge(agent_class=HistoryAgent, max_context_chars=60)
async def test_each_answer_gets_the_conversation_before_it_without_rereading_the_log(
    api: Api, streams: StreamFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = await _watching(api, streams)
    await _send(api, "first", "c1")
    await stream.wait_for(lambda s: _ends(s) == 1)
    # From now on the runner keeps the context itself: the log is not parsed again.
    monkeypatch.setattr(
        "jupyter_chatbridge.server.runner.conversation_before",
        lambda *a, **k: pytest.fail("the log was parsed again for an answer's context"),
    )
    for number in (2, 3):
        await _send(api, f"q{number}", f"c{number}")
        await stream.wait_for(lambda s, n=number: _ends(s) == n)
    answers = [e["text"] for e in stream.session_events("s1") if e["type"] == "block_delta"]
    assert answers[0] == "0 turns: "
    assert answers[1] == "2 turns: user:None:first | assistant:complete:0 turns: "
    # 60 characters: the second answer (55) and its question (2) fit, the first exchange
    # (5 + 9) no longer does; whole turns are dropped, oldest first.
    assert len(answers[1]) == 55
    assert answers[2] == f"2 turns: user:None:q2 | assistant:complete:{answers[1]}"


def _ends(stream: EventStream) -> int:
    return sum(e["type"] == "message_end" for e in stream.session_events("s1"))
