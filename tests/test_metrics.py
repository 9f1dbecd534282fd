"""Prometheus metrics, scraped from jupyter_server's own `/metrics` with the token.

The registry is process-wide (every in-process server of the test run records
into it), so each test reads the counters before and after its workload and
asserts the exact difference. The exposition text is parsed with
prometheus_client's own parser.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tornado.httpclient import HTTPClientError

from jupyter_chatbridge.server.bridge import ChatBridge

from .agents import FailingAgent, GateAgent
from .support import Api, StreamFactory, eventually, new_cid

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(jp_fetch: Any) -> Samples:
    """Every sample `/metrics` serves, by name and labels (jp_fetch sends the token)."""
    response = await jp_fetch("metrics", method="GET")
    assert response.code == 200
    text = response.body.decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


class Delta:
    """Reads one sample's change between two scrapes (a missing sample counts as 0)."""

    def __init__(self, before: Samples, after: Samples) -> None:
        self.before, self.after = before, after

    def __call__(self, name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return self.after.get(key, 0.0) - self.before.get(key, 0.0)

    def gauge(self, name: str, **labels: str) -> float:
        return self.after[(name, frozenset(labels.items()))]


def _send(sid: str, msg_id: str, text: str = "hi") -> dict[str, str]:
    return {"sessionId": sid, "clientMsgId": msg_id, "text": text}


ANSWER = 5  # user_message, message_start, "working ", "done", message_end (GateAgent)


def shown(bridge: ChatBridge, seq: int, session_id: str = "s1") -> Callable[[], bool]:
    """True once the session's events up to `seq` were shown (its answers are done)."""
    return lambda: bridge.sessions.get(session_id).log.shown_seq >= seq


@pytest.mark.chatbridge(
    agent_class=GateAgent,
    max_pending_inputs=2,
    replay_buffer_size=8,
    max_stream_buffer_bytes=256 * 1024,
)
async def test_a_scripted_workload_shows_in_every_counter(
    jp_fetch: Any,
    jp_ws_fetch: Any,
    api: Api,
    streams: StreamFactory,
    bridge: ChatBridge,
    gate: asyncio.Event,
    jp_http_port: int,
    jp_base_url: str,
    token: str,
) -> None:
    before = await scrape(jp_fetch)
    await api.ok("POST", "sessions", body={"sessionId": "s1"})
    cid = new_cid()
    first = await streams.open(cid)  # connect: a new connection
    await api.ok("POST", "watch", body={"sessionId": "s1"}, headers={"X-Connection-ID": cid})

    # Sends: three accepted (one answering at the gate, two queued), then the queue is full.
    assert (await api("POST", "send", body=_send("s1", "m0")))[0] == 202
    await eventually(lambda: GateAgent.runs == ["m0"])
    for msg_id in ("m1", "m2"):
        assert (await api("POST", "send", body=_send("s1", msg_id)))[0] == 202
    assert (await api("POST", "send", body=_send("s1", "m3")))[0] == 429
    assert (await api("POST", "send", body=_send("s1", "m1")))[0] == 200  # duplicate
    assert (await api("POST", "send", body=_send("s1", "m4", "x" * 70000)))[0] == 413
    assert (await api("POST", "send", raw_body="x" * 400_000))[0] == 413  # never parsed
    assert (await api("POST", "send", body={"sessionId": "s1", "text": "no id"}))[0] == 400
    gate.set()
    await first.wait_events(3 * ANSWER)

    # Resume without a gap: 5 frames missed, all still in the replay buffer (8).
    first.cut()
    await first.wait_for(lambda s: s.ended)
    assert (await api("POST", "send", body=_send("s1", "m5")))[0] == 202
    await eventually(shown(bridge, 4 * ANSWER))
    second = await streams.open(cid, last_event_id=3 * ANSWER)
    assert (second.welcome["resumed"], second.welcome["gap"]) == (True, False)
    await second.wait_events(ANSWER)

    # Resume with a gap: 10 frames missed, only the last 8 kept.
    second.cut()
    await second.wait_for(lambda s: s.ended)
    for msg_id in ("m6", "m7"):
        assert (await api("POST", "send", body=_send("s1", msg_id)))[0] == 202
    await eventually(shown(bridge, 6 * ANSWER))
    third = await streams.open(cid, last_event_id=4 * ANSWER)
    assert third.welcome["gap"] is True and third.welcome["replayed"] == 8
    await third.wait_events(8)

    # A slow consumer: a watcher that never reads, fed 60 kB messages until it is dropped.
    slow_cid = new_cid()
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(("127.0.0.1", jp_http_port))
    slow.sendall(
        f"GET {jp_base_url}chatbridge/api/events?cid={slow_cid} HTTP/1.1\r\n"
        f"Host: 127.0.0.1\r\nAuthorization: token {token}\r\n\r\n".encode()
    )
    big_sends = 0
    try:
        await eventually(lambda: bridge.streams.get(slow_cid) is not None)
        headers = {"X-Connection-ID": slow_cid}
        await api.ok("POST", "watch", body={"sessionId": "s1"}, headers=headers)
        while bridge.streams.get(slow_cid) is not None:
            assert big_sends < 200, "the slow consumer was never dropped"
            big_sends += 1
            body = _send("s1", f"big{big_sends}", "y" * 60000)
            assert (await api("POST", "send", body=body))[0] == 202
            await eventually(shown(bridge, (6 + big_sends) * ANSWER))
    finally:
        slow.close()
    await third.wait_events(8 + big_sends * ANSWER)

    # A session deleted while a socket is open on it (4404), and a browser asking for
    # a session that does not exist (4404 at once).
    await api.ok("POST", "sessions", body={"sessionId": "s2"})
    ws = await jp_ws_fetch("chatbridge", "api", "sessions", "s2", "ws")
    await eventually(lambda: "s2" in bridge.fanout.sockets)
    await api("DELETE", "sessions", "s2")
    assert json.loads(await ws.read_message())["type"] == "session_ended"
    assert await ws.read_message() is None
    assert ws.close_code == 4404
    ws.close()
    origin = {"Origin": f"http://localhost:{jp_http_port}"}
    ghost = await jp_ws_fetch("chatbridge", "api", "sessions", "ghost", "ws", headers=origin)
    assert await ghost.read_message() is None
    assert ghost.close_code == 4404
    ghost.close()

    last_seq = (await api.ok("GET", "sessions", "s1"))["lastSeq"]
    frame_ids = {c: bridge.connections.get(c).last_frame_id for c in (cid, slow_cid)}
    assert frame_ids[cid] == third.events[-1].id == last_seq  # it watched s1 from the start
    delta = Delta(before, await scrape(jp_fetch))

    accepted = 3 + 3 + big_sends
    assert delta("chatbridge_resumes_total", outcome="new") == 2
    assert delta("chatbridge_resumes_total", outcome="resumed") == 1
    assert delta("chatbridge_resumes_total", outcome="gap") == 1
    assert delta("chatbridge_replayed_frames_total") == ANSWER + 8
    assert delta("chatbridge_sends_total", outcome="accepted", code="") == accepted
    assert delta("chatbridge_sends_total", outcome="duplicate", code="") == 1
    assert delta("chatbridge_sends_total", outcome="refused", code="busy") == 1
    assert delta("chatbridge_sends_total", outcome="refused", code="too_large") == 2
    assert delta("chatbridge_sends_total", outcome="refused", code="bad_request") == 1
    assert delta("chatbridge_slow_consumer_drops_total") == 1
    assert delta("chatbridge_session_unknown_closes_total") == 2
    # Every event of s1, and s2's session_ended.
    assert delta("chatbridge_events_published_total") == last_seq + 1
    # Each frame a connection was given has its id; the socket got s2's session_ended.
    assert delta("chatbridge_frames_delivered_total") == sum(frame_ids.values()) + 1
    assert delta("chatbridge_send_receipt_seconds_count") == accepted + 1
    assert delta("chatbridge_answer_first_event_seconds_count") == accepted
    assert delta("chatbridge_answer_duration_seconds_count") == accepted
    for unchanged in ("agent_errors_total", "stops_total", "store_commit_failures_total"):
        assert (
            sum(
                v - before.get(key, 0.0)
                for key, v in delta.after.items()
                if key[0] == f"chatbridge_{unchanged}"
            )
            == 0
        ), unchanged

    # Gauges: this server's state now (earlier test servers were shut down).
    assert delta.gauge("chatbridge_connections", state="active") == 1
    assert delta.gauge("chatbridge_connections", state="inactive") == 1  # the slow one
    assert delta.gauge("chatbridge_open_streams") == 1
    assert delta.gauge("chatbridge_open_session_sockets") == 0
    assert delta.gauge("chatbridge_sessions") == 1
    assert delta.gauge("chatbridge_answers_running") == 0
    assert delta.gauge("chatbridge_inputs_queued") == 0
    held = sum(c.replay.byte_size() for c in bridge.connections)
    assert delta.gauge("chatbridge_replay_buffer_bytes") == held > 60000  # a big message


@pytest.mark.chatbridge(agent_class=GateAgent)
async def test_gauges_show_running_answers_queued_inputs_and_open_sockets(
    jp_fetch: Any, jp_ws_fetch: Any, api: Api, bridge: ChatBridge, gate: asyncio.Event
) -> None:
    await api.ok("POST", "sessions", body={"sessionId": "s1"})
    for msg_id in ("m0", "m1", "m2"):
        await api.ok("POST", "send", body=_send("s1", msg_id))
    ws = await jp_ws_fetch("chatbridge", "api", "sessions", "s1", "ws")
    await eventually(lambda: GateAgent.runs == ["m0"] and "s1" in bridge.fanout.sockets)
    now = Delta({}, await scrape(jp_fetch))
    assert now.gauge("chatbridge_answers_running") == 1
    assert now.gauge("chatbridge_inputs_queued") == 2
    assert now.gauge("chatbridge_open_session_sockets") == 1
    assert now.gauge("chatbridge_connections", state="active") == 0
    gate.set()
    await eventually(lambda: not bridge.sessions.get("s1").running)
    ws.close()
    await eventually(lambda: "s1" not in bridge.fanout.sockets)
    now = Delta({}, await scrape(jp_fetch))
    assert now.gauge("chatbridge_answers_running") == 0
    assert now.gauge("chatbridge_inputs_queued") == 0
    assert now.gauge("chatbridge_open_session_sockets") == 0


@pytest.mark.chatbridge(agent_class=FailingAgent)
async def test_a_failing_agent_counts_an_error_midway(
    jp_fetch: Any, api: Api, bridge: ChatBridge
) -> None:
    before = await scrape(jp_fetch)
    await api.ok("POST", "sessions", body={"sessionId": "s1"})
    await api.ok("POST", "send", body=_send("s1", "m1"))
    # user_message, message_start, "partial ", error, message_end
    await eventually(shown(bridge, 5))
    delta = Delta(before, await scrape(jp_fetch))
    assert delta("chatbridge_agent_errors_total", kind="midway") == 1
    assert delta("chatbridge_agent_errors_total", kind="before_output") == 0
    assert delta("chatbridge_answer_duration_seconds_count") == 1


async def test_metrics_need_the_token(jp_fetch: Any) -> None:
    with pytest.raises(HTTPClientError) as refused:
        await jp_fetch("metrics", method="GET", headers={"Authorization": ""})
    assert refused.value.code == 403


@pytest.mark.chatbridge(metrics_enabled=False)
async def test_metrics_off_records_nothing(jp_fetch: Any, api: Api, streams: StreamFactory) -> None:
    before = await scrape(jp_fetch)
    await api.ok("POST", "sessions", body={"sessionId": "s1"})
    cid = new_cid()
    stream = await streams.open(cid)
    await api.ok("POST", "watch", body={"sessionId": "s1"}, headers={"X-Connection-ID": cid})
    await api.ok("POST", "send", body=_send("s1", "m1", "hello there"))
    await stream.wait_events(6)
    delta = Delta(before, await scrape(jp_fetch))
    changed = {key for key, value in delta.after.items() if value != before.get(key, 0.0)}
    assert not {name for name, _ in changed if name.startswith("chatbridge_")}
    assert delta.gauge("chatbridge_open_streams") == 0  # this server is left out
