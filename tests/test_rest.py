"""The REST contract: sessions, history, connection calls, send, and every error status."""

from __future__ import annotations

import asyncio
import json

import pytest

from jupyter_chatbridge.server.bridge import ChatBridge

from .agents import FailingAgent, GateAgent
from .support import Api, StreamFactory, eventually, new_cid


async def _watcher(api: Api, streams: StreamFactory, sid: str):
    cid = new_cid()
    stream = await streams.open(cid)
    await api.ok("POST", "watch", body={"sessionId": sid}, headers={"X-Connection-ID": cid})
    return cid, stream


def _send_body(sid: str, msg_id: str, text: str = "hi") -> dict:
    return {"sessionId": sid, "clientMsgId": msg_id, "text": text}


# -- sessions ------------------------------------------------------------------------------


async def test_session_lifecycle(api: Api) -> None:
    assert await api.ok("GET", "sessions") == {"sessions": []}
    status, created = await api("POST", "sessions", body={"sessionId": "demo"})
    assert status == 201
    assert created == {"sessionId": "demo", "lastSeq": 0, "running": False, "driver": None}
    status, body = await api("POST", "sessions", body={"sessionId": "demo"})
    assert (status, body["code"]) == (409, "session_exists")
    generated = await api.ok("POST", "sessions")
    assert generated["sessionId"].startswith("s-")
    listed = [s["sessionId"] for s in (await api.ok("GET", "sessions"))["sessions"]]
    assert sorted(listed) == sorted(["demo", generated["sessionId"]])
    assert (await api.ok("GET", "sessions", "demo"))["lastSeq"] == 0
    status, _ = await api("DELETE", "sessions", "demo")
    assert status == 204
    status, body = await api("GET", "sessions", "demo")
    assert (status, body["code"]) == (404, "session_unknown")


@pytest.mark.parametrize("bad", ["", "-x", "a" * 65, "a b", "é", "x/y", 7, None])
async def test_bad_session_id_on_create_is_400(api: Api, bad: object, bridge: ChatBridge) -> None:
    body = {"sessionId": bad} if bad is not None else {"sessionId": None}
    status, answer = await api("POST", "sessions", body=body)
    if bad is None:  # null means "generate one"
        assert status == 201
        return
    assert (status, answer["code"]) == (400, "bad_request")
    assert len(bridge.sessions) == 0


async def test_delete_tells_watchers_and_driver(api: Api, streams: StreamFactory) -> None:
    await api.ok("POST", "sessions", body={"sessionId": "s1"})
    cid, stream = await _watcher(api, streams, "s1")
    await api.ok("POST", "attach", body={"sessionId": "s1"}, headers={"X-Connection-ID": cid})
    await api.ok("DELETE", "sessions", "s1")
    await stream.wait_for(lambda s: any(f.event == "detached" for f in s.frames))
    ended = stream.session_events("s1")[-1]
    assert ended == {"type": "session_ended", "sessionId": "s1", "seq": 1}
    detached = [f.data for f in stream.frames if f.event == "detached"]
    assert detached == [{"sessionId": "s1", "reason": "session_ended"}]
    status, body = await api("DELETE", "sessions", "s1")
    assert (status, body["code"]) == (404, "session_unknown")


async def test_history_pages_by_seq(api: Api) -> None:
    await api.ok("POST", "sessions", body={"sessionId": "s1"})
    await api.ok("POST", "send", body=_send_body("s1", "m1", "one two three"))
    await _wait_for_seq(api, "s1", 7)
    page = await api.ok("GET", "sessions", "s1", "events", params={"after": "2", "limit": "3"})
    assert [e["seq"] for e in page["events"]] == [3, 4, 5]
    assert page["lastSeq"] == 7
    everything = await api.ok("GET", "sessions", "s1", "events")
    assert [e["seq"] for e in everything["events"]] == list(range(1, 8))
    assert everything["events"][0]["text"] == "one two three"
    assert (await api.ok("GET", "sessions", "s1", "events", params={"after": "7"}))["events"] == []


@pytest.mark.parametrize(
    "params", [{"after": "-1"}, {"after": "x"}, {"limit": "0"}, {"limit": "10001"}]
)
async def test_history_bad_parameters_are_400(api: Api, params: dict) -> None:
    await api.ok("POST", "sessions", body={"sessionId": "s1"})
    status, body = await api("GET", "sessions", "s1", "events", params=params)
    assert (status, body["code"]) == (400, "bad_request")


async def _wait_for_seq(api: Api, sid: str, seq: int) -> None:
    async def _poll() -> None:
        while (await api.ok("GET", "sessions", sid))["lastSeq"] < seq:
            await asyncio.sleep(0.005)

    await asyncio.wait_for(_poll(), 10)


# -- connection-scoped calls ---------------------------------------------------------------


@pytest.mark.parametrize("action", ["watch", "unwatch", "attach", "detach", "suspend"])
async def test_unknown_connection_is_404(api: Api, action: str) -> None:
    await api.ok("POST", "sessions", body={"sessionId": "s1"})
    for headers in ({}, {"X-Connection-ID": new_cid()}):
        status, body = await api("POST", action, body={"sessionId": "s1"}, headers=headers)
        assert (status, body["code"]) == (404, "connection_unknown")


@pytest.mark.parametrize("action", ["watch", "unwatch", "attach", "detach", "suspend"])
async def test_unknown_session_is_404(api: Api, streams: StreamFactory, action: str) -> None:
    cid = new_cid()
    await streams.open(cid)
    status, body = await api(
        "POST", action, body={"sessionId": "nope"}, headers={"X-Connection-ID": cid}
    )
    assert (status, body["code"]) == (404, "session_unknown")


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        "[1]",
        '"s1"',
        "{}",
        '{"sessionId": 5}',
        '{"sessionId": "s1", "afterSeq": "3"}',
        '{"sessionId": "s1", "afterSeq": true}',
        '{"sessionId": "s1", "afterSeq": -1}',
    ],
)
async def test_malformed_watch_is_400_and_changes_nothing(
    api: Api, streams: StreamFactory, bridge: ChatBridge, raw: str
) -> None:
    await api.ok("POST", "sessions", body={"sessionId": "s1"})
    cid = new_cid()
    await streams.open(cid)
    status, body = await api("POST", "watch", raw_body=raw, headers={"X-Connection-ID": cid})
    assert (status, body["code"]) == (400, "bad_request")
    assert bridge.sessions.get("s1").watchers == set()


async def test_unwatch_stops_delivery(api: Api, streams: StreamFactory) -> None:
    await api.ok("POST", "sessions", body={"sessionId": "s1"})
    await api.ok("POST", "sessions", body={"sessionId": "s2"})
    cid, stream = await _watcher(api, streams, "s1")
    await api.ok("POST", "watch", body={"sessionId": "s2"}, headers={"X-Connection-ID": cid})
    await api.ok("POST", "unwatch", body={"sessionId": "s1"}, headers={"X-Connection-ID": cid})
    await api.ok("POST", "send", body=_send_body("s1", "m1"))
    await api.ok("POST", "send", body=_send_body("s2", "m1"))
    await stream.wait_events(5, "s2")
    await _wait_for_seq(api, "s1", 5)
    assert stream.session_events("s1") == []


async def test_detach_only_by_the_driver(api: Api, streams: StreamFactory) -> None:
    await api.ok("POST", "sessions", body={"sessionId": "s1"})
    a, b = new_cid(), new_cid()
    await streams.open(a)
    await streams.open(b)
    await api.ok("POST", "attach", body={"sessionId": "s1"}, headers={"X-Connection-ID": a})
    await api.ok("POST", "detach", body={"sessionId": "s1"}, headers={"X-Connection-ID": b})
    assert (await api.ok("GET", "sessions", "s1"))["driver"] == f"{a}:s1"
    await api.ok("POST", "detach", body={"sessionId": "s1"}, headers={"X-Connection-ID": a})
    assert (await api.ok("GET", "sessions", "s1"))["driver"] is None


@pytest.mark.chatbridge(max_watches_per_connection=2)
async def test_watch_limit_per_connection(api: Api, streams: StreamFactory) -> None:
    cid = new_cid()
    await streams.open(cid)
    for sid in ("a", "b", "c"):
        await api.ok("POST", "sessions", body={"sessionId": sid})
    for sid in ("a", "b", "a"):  # re-watching does not count twice
        await api.ok("POST", "watch", body={"sessionId": sid}, headers={"X-Connection-ID": cid})
    status, body = await api(
        "POST", "watch", body={"sessionId": "c"}, headers={"X-Connection-ID": cid}
    )
    assert (status, body["code"]) == (400, "bad_request")
    assert "at most 2" in body["error"]


# -- send ----------------------------------------------------------------------------------


async def test_send_accepts_then_dedups_without_second_run(
    api: Api, streams: StreamFactory
) -> None:
    await api.ok("POST", "sessions", body={"sessionId": "s1"})
    cid, stream = await _watcher(api, streams, "s1")
    status, first = await api(
        "POST", "send", body=_send_body("s1", "m1"), headers={"X-Connection-ID": cid}
    )
    assert status == 202
    assert first == {
        "accepted": True,
        "sessionId": "s1",
        "clientMsgId": "m1",
        "seq": 1,
        "duplicate": False,
    }
    status, again = await api("POST", "send", body=_send_body("s1", "m1", "different text"))
    assert status == 200
    assert again == {**first, "duplicate": True}
    events = await stream.wait_events(5)
    await api.ok("POST", "send", body=_send_body("s1", "m2"))  # a later run proves the first ended
    events = await stream.wait_events(10)
    assert [e["type"] for e in events].count("message_start") == 2
    assert [e["type"] for e in events].count("user_message") == 2
    assert events[0]["connectionId"] == cid
    assert events[5]["connectionId"] is None


async def test_send_with_unknown_connection_header_still_works(api: Api) -> None:
    await api.ok("POST", "sessions", body={"sessionId": "s1"})
    status, _ = await api(
        "POST", "send", body=_send_body("s1", "m1"), headers={"X-Connection-ID": "garbage"}
    )
    assert status == 202
    history = await api.ok("GET", "sessions", "s1", "events")
    assert history["events"][0]["connectionId"] is None


@pytest.mark.chatbridge(agent_class=GateAgent)
async def test_concurrent_sends_are_ordered_and_answered_one_at_a_time(
    api: Api, streams: StreamFactory, gate: asyncio.Event
) -> None:
    await api.ok("POST", "sessions", body={"sessionId": "s1"})
    _, stream = await _watcher(api, streams, "s1")
    receipts = await asyncio.gather(
        *(api.ok("POST", "send", body=_send_body("s1", f"m{i}", f"text {i}")) for i in range(20))
    )
    assert len({r["seq"] for r in receipts}) == 20
    # While the first answer is held at the gate, no second run has started.
    await stream.wait_for(lambda s: any(e["type"] == "block_delta" for e in s.session_events()))
    assert GateAgent.runs == [stream.session_events()[0]["clientMsgId"]]
    assert (await api.ok("GET", "sessions", "s1"))["running"] is True
    gate.set()
    events = await stream.wait_events(20 + 20 * 4)
    users = [e for e in events if e["type"] == "user_message"]
    assert sorted(r["seq"] for r in receipts) == [u["seq"] for u in users]
    assert {r["clientMsgId"]: r["seq"] for r in receipts} == {
        u["clientMsgId"]: u["seq"] for u in users
    }
    starts = [e for e in events if e["type"] == "message_start"]
    # Answers follow acceptance order, and each one ends before the next starts.
    assert [s["replyTo"] for s in starts] == [u["seq"] for u in users]
    answer_types = [e["type"] for e in events if e["type"] in ("message_start", "message_end")]
    assert answer_types == ["message_start", "message_end"] * 20
    assert GateAgent.runs == [u["clientMsgId"] for u in users]
    assert (await api.ok("GET", "sessions", "s1"))["running"] is False


@pytest.mark.chatbridge(agent_class=GateAgent, max_pending_inputs=2)
async def test_full_input_queue_is_429_with_retry_after_but_dedup_still_answers(
    api: Api, gate: asyncio.Event
) -> None:
    await api.ok("POST", "sessions", body={"sessionId": "s1"})
    await api.ok("POST", "send", body=_send_body("s1", "m0"))  # running
    await eventually(lambda: GateAgent.runs == ["m0"])
    await api.ok("POST", "send", body=_send_body("s1", "m1"))  # queued
    await api.ok("POST", "send", body=_send_body("s1", "m2"))  # queued: full
    status, body = await api("POST", "send", body=_send_body("s1", "m3"))
    assert (status, body["code"]) == (429, "busy")
    assert api.last_response.headers["Retry-After"] == "1"
    status, body = await api("POST", "send", body=_send_body("s1", "m1"))
    assert (status, body["duplicate"]) == (200, True)
    history = await api.ok("GET", "sessions", "s1", "events")
    assert [e["clientMsgId"] for e in history["events"] if e["type"] == "user_message"] == [
        "m0",
        "m1",
        "m2",
    ]


@pytest.mark.chatbridge(max_message_bytes=10)
async def test_too_large_is_413(api: Api) -> None:
    await api.ok("POST", "sessions", body={"sessionId": "s1"})
    assert (await api("POST", "send", body=_send_body("s1", "m1", "x" * 10)))[0] == 202
    status, body = await api("POST", "send", body=_send_body("s1", "m2", "x" * 11))
    assert (status, body["code"]) == (413, "too_large")
    status, body = await api("POST", "send", body=_send_body("s1", "m3", "é" * 6))  # 12 bytes
    assert (status, body["code"]) == (413, "too_large")
    status, body = await api("POST", "send", raw_body="x" * 100_000)  # not even parsed
    assert (status, body["code"]) == (413, "too_large")
    assert (await api.ok("GET", "sessions", "s1"))["lastSeq"] >= 1
    history = await api.ok("GET", "sessions", "s1", "events")
    assert [e["clientMsgId"] for e in history["events"] if e["type"] == "user_message"] == ["m1"]


@pytest.mark.parametrize(
    "body",
    [
        {"sessionId": "s1", "clientMsgId": "m1"},
        {"sessionId": "s1", "clientMsgId": "m1", "text": ""},
        {"sessionId": "s1", "clientMsgId": "m1", "text": 5},
        {"sessionId": "s1", "clientMsgId": "has space", "text": "x"},
        {"sessionId": "s1", "clientMsgId": "", "text": "x"},
        {"sessionId": "s1", "clientMsgId": "x" * 129, "text": "x"},
        {"sessionId": "s1", "clientMsgId": "é", "text": "x"},
        {"sessionId": "s1", "clientMsgId": 1, "text": "x"},
        {"clientMsgId": "m1", "text": "x"},
    ],
)
async def test_malformed_send_is_400_and_changes_nothing(
    api: Api, bridge: ChatBridge, body: dict
) -> None:
    await api.ok("POST", "sessions", body={"sessionId": "s1"})
    status, answer = await api("POST", "send", body=body)
    assert (status, answer["code"]) == (400, "bad_request")
    assert bridge.sessions.get("s1").log.last_seq == 0


async def test_send_to_unknown_session_is_404(api: Api) -> None:
    status, body = await api("POST", "send", body=_send_body("ghost", "m1"))
    assert (status, body["code"]) == (404, "session_unknown")


@pytest.mark.chatbridge(agent_class=FailingAgent)
async def test_agent_failure_becomes_an_error_event_and_ends_the_run(
    api: Api, streams: StreamFactory
) -> None:
    await api.ok("POST", "sessions", body={"sessionId": "s1"})
    _, stream = await _watcher(api, streams, "s1")
    await api.ok("POST", "send", body=_send_body("s1", "m1"))
    events = await stream.wait_events(5)
    assert [e["type"] for e in events] == [
        "user_message",
        "message_start",
        "block_delta",
        "error",
        "message_end",
    ]
    assert "model backend unavailable" in events[3]["message"]
    assert (await api.ok("GET", "sessions", "s1"))["running"] is False


# -- auth ----------------------------------------------------------------------------------

ENDPOINTS = [
    ("GET", ("sessions",)),
    ("POST", ("sessions",)),
    ("GET", ("sessions", "s1")),
    ("DELETE", ("sessions", "s1")),
    ("GET", ("sessions", "s1", "events")),
    ("POST", ("watch",)),
    ("POST", ("unwatch",)),
    ("POST", ("attach",)),
    ("POST", ("detach",)),
    ("POST", ("suspend",)),
    ("POST", ("send",)),
]


@pytest.mark.parametrize(("method", "parts"), ENDPOINTS)
async def test_unauthenticated_requests_are_403_and_change_nothing(
    api: Api, bridge: ChatBridge, method: str, parts: tuple[str, ...]
) -> None:
    await api.ok("POST", "sessions", body={"sessionId": "s1"})
    status, body = await api(
        method,
        *parts,
        body=_send_body("s1", "m1"),
        headers={"Authorization": "token wrong"},
    )
    assert (status, body["code"]) == (403, "forbidden")
    assert "s1" in bridge.sessions and bridge.sessions.get("s1").log.last_seq == 0


def test_contract_error_body_shape() -> None:
    from jupyter_chatbridge.protocol import ErrorCode
    from jupyter_chatbridge.server.bridge import BridgeError

    error = BridgeError(429, ErrorCode.BUSY, "later", retry_after=3)
    assert json.loads(json.dumps(error.body())) == {"error": "later", "code": "busy"}


# -- the fault-injection seam used by client tests -----------------------------------------


async def test_fault_plan_scripts_send_failures(api: Api, jp_serverapp, bridge: ChatBridge) -> None:  # type: ignore[no-untyped-def]
    from tornado.httpclient import HTTPClientError

    from jupyter_chatbridge.testing import Fault, FaultPlan

    plan = FaultPlan().add(
        "send",
        Fault.status(500),
        Fault.status(429, retry_after=2),
        Fault.drop_before(),
        Fault.drop_after(),
    )
    jp_serverapp.web_app.settings["chatbridge_faults"] = plan
    await api.ok("POST", "sessions", body={"sessionId": "s1"})
    status, body = await api("POST", "send", body=_send_body("s1", "m1"))
    assert (status, body["code"]) == (500, "internal")
    status, body = await api("POST", "send", body=_send_body("s1", "m1"))
    assert (status, body["code"]) == (429, "busy")
    assert api.last_response.headers["Retry-After"] == "2"
    assert bridge.sessions.get("s1").log.last_seq == 0
    for _ in range(2):  # dropped before, then dropped after the server accepted it
        with pytest.raises((HTTPClientError, ConnectionError, OSError)):
            await api._fetch(
                "chatbridge", "api", "send", method="POST", body=json.dumps(_send_body("s1", "m1"))
            )
    assert bridge.sessions.get("s1").log.receipt("m1") is not None
    status, body = await api("POST", "send", body=_send_body("s1", "m1"))
    assert (status, body["duplicate"], body["seq"]) == (200, True, 1)
    assert plan.remaining("send") == 0
