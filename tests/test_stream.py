"""The SSE stream: stable cid, resume, gap, stream replacement, TTL expiry."""

from __future__ import annotations

import pytest

from jupyter_chatbridge.clock import FakeScheduler
from jupyter_chatbridge.server.bridge import ChatBridge
from jupyter_chatbridge.server.handlers.events import heartbeat_warning

from .support import Api, StreamFactory, eventually, new_cid


async def _session_with_watcher(api: Api, streams: StreamFactory, sid: str = "s1"):
    await api.ok("POST", "sessions", body={"sessionId": sid})
    cid = new_cid()
    stream = await streams.open(cid)
    await api.ok("POST", "watch", body={"sessionId": sid}, headers={"X-Connection-ID": cid})
    return cid, stream


async def _send(api: Api, sid: str, text: str, msg_id: str) -> dict:
    return await api.ok(
        "POST", "send", body={"sessionId": sid, "clientMsgId": msg_id, "text": text}
    )


def _answer_len(text: str) -> int:
    # user_message, message_start, "Echo: ", one delta per word, message_end
    return 4 + len(text.split())


async def test_welcome_and_headers(streams: StreamFactory, bridge: ChatBridge) -> None:
    cid = new_cid()
    stream = await streams.open(cid.upper())  # case-insensitive, normalised
    assert stream.status == 200
    assert stream.response_headers["content-type"] == "text/event-stream"
    assert stream.response_headers["cache-control"] == "no-cache"
    assert stream.frames[0].id is None
    assert stream.welcome == {
        "connectionId": cid,
        "stable": True,
        "resumed": False,
        "replayed": 0,
        "gap": False,
        "epoch": bridge.epoch,
        "protocol": 1,
    }


async def test_without_cid_server_assigns_unstable_id(streams: StreamFactory) -> None:
    stream = await streams.open()
    assert stream.welcome["connectionId"].startswith("conn-")
    assert stream.welcome["stable"] is False


@pytest.mark.parametrize(
    "bad",
    [
        "nope",
        "cid-------------------------------------",  # right length, no UUID structure
        "cid-0b7a3c52-1111-4222-8333-44445555666",  # one digit short
        "conn-0b7a3c52-1111-4222-8333-444455556666",
        "cid-0b7a3c52-1111-4222-8333-444455556666x",
    ],
)
async def test_malformed_cid_is_400_not_a_stream(
    streams: StreamFactory, bridge: ChatBridge, bad: str
) -> None:
    stream = await streams.open(bad)
    assert stream.status == 400
    assert b'"code":"bad_request"' in stream.body
    assert len(bridge.connections) == 0


async def test_unauthenticated_stream_is_403(streams: StreamFactory, bridge: ChatBridge) -> None:
    stream = await streams.open(new_cid(), auth=False)
    assert stream.status == 403
    assert len(bridge.connections) == 0


async def test_frame_ids_grow_and_events_carry_seq(api: Api, streams: StreamFactory) -> None:
    _, stream = await _session_with_watcher(api, streams)
    await _send(api, "s1", "hello world", "m1")
    events = await stream.wait_events(_answer_len("hello world"))
    assert [e["type"] for e in events] == [
        "user_message",
        "message_start",
        "block_delta",
        "block_delta",
        "block_delta",
        "message_end",
    ]
    assert [e["seq"] for e in events] == list(range(1, 7))
    assert "".join(e["text"] for e in events if e["type"] == "block_delta") == "Echo: hello world"
    assert [f.id for f in stream.events] == list(range(1, 7))


async def test_stable_cid_keeps_state_across_reconnect(
    api: Api, streams: StreamFactory, bridge: ChatBridge
) -> None:
    cid, first = await _session_with_watcher(api, streams)
    await api.ok("POST", "attach", body={"sessionId": "s1"}, headers={"X-Connection-ID": cid})
    await _send(api, "s1", "one", "m1")
    await first.wait_events(_answer_len("one"))
    first.cut()
    await first.wait_for(lambda s: s.ended)

    second = await streams.open(cid)
    assert second.welcome["resumed"] is True
    assert second.welcome["connectionId"] == cid
    # Still watching and driving without asking again, and the frame counter goes on.
    await _send(api, "s1", "two", "m2")
    events = await second.wait_events(_answer_len("two"))
    assert events[0]["clientMsgId"] == "m2"
    assert second.events[0].id == first.events[-1].id + 1
    assert (await api.ok("GET", "sessions", "s1"))["driver"] == f"{cid}:s1"
    assert len(bridge.connections) == 1


async def test_last_event_id_replays_exactly_the_missed_frames(
    api: Api, streams: StreamFactory
) -> None:
    cid, first = await _session_with_watcher(api, streams)
    await _send(api, "s1", "before the cut", "m1")
    await first.wait_events(_answer_len("before the cut"))
    seen = first.events[2].id  # the client saw only the first two frames
    first.cut()
    await first.wait_for(lambda s: s.ended)
    await _send(api, "s1", "while away", "m2")  # delivered into the replay buffer only

    second = await streams.open(cid, last_event_id=seen)
    total = _answer_len("before the cut") + _answer_len("while away")
    assert second.welcome["replayed"] == total - seen
    assert second.welcome["gap"] is False
    replayed = second.events
    assert [f.id for f in replayed] == list(range(seen + 1, total + 1))
    assert [f.data["seq"] for f in replayed] == list(range(seen + 1, total + 1))


async def test_last_event_id_as_query_parameter(api: Api, streams: StreamFactory) -> None:
    cid, first = await _session_with_watcher(api, streams)
    await _send(api, "s1", "hi", "m1")
    await first.wait_events(_answer_len("hi"))
    first.cut()
    second = await streams.open(cid, query="lastEventId=2")
    assert [f.id for f in second.events] == list(range(3, _answer_len("hi") + 1))


@pytest.mark.chatbridge(replay_buffer_size=3)
async def test_gap_flag_when_the_replay_buffer_overflowed(api: Api, streams: StreamFactory) -> None:
    cid, first = await _session_with_watcher(api, streams)
    first.cut()
    await first.wait_for(lambda s: s.ended)
    await _send(api, "s1", "a b c d e", "m1")
    history = await api.ok("GET", "sessions", "s1", "events")
    assert history["lastSeq"] == _answer_len("a b c d e")

    second = await streams.open(cid, last_event_id=0)
    assert second.welcome["gap"] is True
    # What the buffer still holds is replayed; the rest comes from history by seq.
    assert [f.id for f in second.events] == [7, 8, 9]


async def test_unknown_cid_with_last_event_id_reports_gap(streams: StreamFactory) -> None:
    stream = await streams.open(new_cid(), last_event_id=41)
    assert stream.welcome["resumed"] is False
    assert stream.welcome["gap"] is True


async def test_second_stream_wins_and_first_close_changes_nothing(
    api: Api, streams: StreamFactory, bridge: ChatBridge, clock: FakeScheduler
) -> None:
    cid, first = await _session_with_watcher(api, streams)
    second = await streams.open(cid)
    # The server ended the older stream; its late close handler must not
    # remove the newer one nor start an inactivity timer.
    await first.wait_for(lambda s: s.ended)
    assert second.welcome["resumed"] is True
    assert bridge.connections.get(cid).active
    assert clock.pending == 1  # only the heartbeat
    await _send(api, "s1", "still here", "m1")
    await second.wait_events(_answer_len("still here"))
    clock.advance(3600)
    assert bridge.connections.get(cid) is not None
    assert bridge.connections.get(cid).active


async def test_heartbeat_pings_idle_streams(streams: StreamFactory, clock: FakeScheduler) -> None:
    stream = await streams.open(new_cid())
    assert stream.comments == 0
    clock.advance(15)
    await stream.wait_for(lambda s: s.comments >= 1)
    clock.advance(15)
    await stream.wait_for(lambda s: s.comments >= 2)


async def test_a_stream_that_asks_for_event_pings_gets_an_event_an_eventsource_can_see(
    streams: StreamFactory, clock: FakeScheduler
) -> None:
    browser = await streams.open(new_cid(), query="heartbeat=event")
    script = await streams.open(new_cid())
    clock.advance(15)
    await browser.wait_for(lambda s: any(f.event == "ping" for f in s.frames))
    await script.wait_for(lambda s: s.comments >= 1)
    ping = next(f for f in browser.frames if f.event == "ping")
    # No id: a ping never moves Last-Event-ID, so a resume replays from the last real frame.
    assert ping.id is None and ping.data == {}
    assert browser.comments == 0 and [f.event for f in script.frames] == ["welcome"]


async def test_an_unknown_heartbeat_is_400_not_a_stream(
    streams: StreamFactory, bridge: ChatBridge
) -> None:
    stream = await streams.open(new_cid(), query="heartbeat=sometimes")
    assert stream.status == 400
    assert b'"code":"bad_request"' in stream.body and b"heartbeat must be" in stream.body
    assert len(bridge.connections) == 0


async def test_server_assigned_connection_is_dropped_at_once(
    api: Api, streams: StreamFactory, bridge: ChatBridge
) -> None:
    await api.ok("POST", "sessions", body={"sessionId": "s1"})
    stream = await streams.open()
    conn = stream.welcome["connectionId"]
    await api.ok("POST", "attach", body={"sessionId": "s1"}, headers={"X-Connection-ID": conn})
    stream.cut()
    await stream.wait_for(lambda s: s.ended)
    await eventually(lambda: bridge.connections.get(conn) is None)
    assert (await api.ok("GET", "sessions", "s1"))["driver"] is None


async def _drive(api: Api, cid: str, sid: str) -> None:
    await api.ok("POST", "attach", body={"sessionId": sid}, headers={"X-Connection-ID": cid})


async def test_expiry_detaches_only_sessions_still_owned_and_not_suspended(
    api: Api, streams: StreamFactory, bridge: ChatBridge, clock: FakeScheduler
) -> None:
    for sid in ("owned", "suspended", "taken"):
        await api.ok("POST", "sessions", body={"sessionId": sid})
    cid = new_cid()
    stream = await streams.open(cid)
    for sid in ("owned", "suspended", "taken"):
        await _drive(api, cid, sid)
    await api.ok("POST", "watch", body={"sessionId": "owned"}, headers={"X-Connection-ID": cid})
    # sendBeacon style: text/plain body, connection id in the query.
    status, _ = await api(
        "POST",
        "suspend",
        raw_body='{"sessionId": "suspended"}',
        headers={"Content-Type": "text/plain;charset=UTF-8"},
        params={"connectionId": cid},
    )
    assert status == 204
    stream.cut()
    await eventually(lambda: not bridge.connections.get(cid).active)

    # Another tab takes "taken" over during the TTL.
    other = new_cid()
    await streams.open(other)
    await _drive(api, other, "taken")

    clock.advance(59)
    assert bridge.connections.get(cid) is not None
    clock.advance(1)
    assert bridge.connections.get(cid) is None

    drivers = {s["sessionId"]: s["driver"] for s in (await api.ok("GET", "sessions"))["sessions"]}
    assert drivers == {
        "owned": None,
        "suspended": f"{cid}:suspended",
        "taken": f"{other}:taken",
    }
    assert bridge.sessions.get("owned").watchers == set()


async def test_reconnect_within_ttl_cancels_expiry(
    api: Api, streams: StreamFactory, bridge: ChatBridge, clock: FakeScheduler
) -> None:
    await api.ok("POST", "sessions", body={"sessionId": "s1"})
    cid = new_cid()
    stream = await streams.open(cid)
    await _drive(api, cid, "s1")
    stream.cut()
    await eventually(lambda: not bridge.connections.get(cid).active)
    clock.advance(30)
    await streams.open(cid)
    clock.advance(3600)
    assert (await api.ok("GET", "sessions", "s1"))["driver"] == f"{cid}:s1"


async def test_expired_cid_comes_back_as_a_new_connection(
    api: Api, streams: StreamFactory, bridge: ChatBridge, clock: FakeScheduler
) -> None:
    cid, stream = await _session_with_watcher(api, streams)
    stream.cut()
    await eventually(lambda: not bridge.connections.get(cid).active)
    clock.advance(60)
    again = await streams.open(cid, last_event_id=3)
    assert again.welcome["resumed"] is False
    assert again.welcome["gap"] is True
    assert bridge.sessions.get("s1").watchers == set()


async def test_take_over_notifies_the_previous_driver(api: Api, streams: StreamFactory) -> None:
    await api.ok("POST", "sessions", body={"sessionId": "s1"})
    a, b = new_cid(), new_cid()
    stream_a = await streams.open(a)
    await streams.open(b)
    await _drive(api, a, "s1")
    body = await api.ok("POST", "attach", body={"sessionId": "s1"}, headers={"X-Connection-ID": b})
    assert body == {"sessionId": "s1", "clientId": f"{b}:s1"}
    await stream_a.wait_for(lambda s: any(f.event == "detached" for f in s.frames))
    detached = next(f for f in stream_a.frames if f.event == "detached")
    assert detached.data == {"sessionId": "s1", "reason": "taken_over"}
    assert detached.id is not None and "seq" not in detached.data


async def test_watch_after_seq_then_live_without_duplicates(
    api: Api, streams: StreamFactory
) -> None:
    await api.ok("POST", "sessions", body={"sessionId": "s1"})
    await _send(api, "s1", "first", "m1")
    await _send(api, "s1", "second", "m2")
    cid = new_cid()
    stream = await streams.open(cid)
    await _wait_history(api, "s1", _answer_len("first") + _answer_len("second"))
    body = await api.ok(
        "POST", "watch", body={"sessionId": "s1", "afterSeq": 3}, headers={"X-Connection-ID": cid}
    )
    assert body == {"sessionId": "s1", "lastSeq": 10}
    await _send(api, "s1", "third", "m3")
    events = await stream.wait_events(10 - 3 + _answer_len("third"))
    assert [e["seq"] for e in events] == list(range(4, 16))


async def _wait_history(api: Api, sid: str, last_seq: int) -> None:
    import asyncio

    async def _poll() -> None:
        while (await api.ok("GET", "sessions", sid))["lastSeq"] < last_seq:
            await asyncio.sleep(0.005)

    await asyncio.wait_for(_poll(), 10)


def test_a_heartbeat_clients_would_take_for_silence_is_warned_about() -> None:
    assert heartbeat_warning(15) is None and heartbeat_warning(44) is None
    assert "pings are off" in (heartbeat_warning(0) or "")
    slow = heartbeat_warning(60) or ""
    assert "every 60 s" in slow and "below 45" in slow
