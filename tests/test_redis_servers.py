"""Two real `jupyter server` processes on one real Redis (store_url): shared sessions,
one order per session, one agent run per session, failover, and Redis going away.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from tornado.httpclient import AsyncHTTPClient

from .redis_support import RedisServer
from .server_process import ServerProcess
from .support import EventStream, new_cid

Events = list[dict[str, Any]]
LEASE = 2.0  # seconds: a dead owner's session is taken over within about this


@pytest.fixture
def two_servers(
    tmp_path: Path, own_redis: RedisServer
) -> Iterator[Callable[..., list[ServerProcess]]]:
    made: list[ServerProcess] = []

    def make(*args: str) -> list[ServerProcess]:
        for name in ("a", "b"):
            root = tmp_path / name
            root.mkdir()
            made.append(
                ServerProcess(
                    root,
                    f"--ChatBridgeApp.store_url={own_redis.url}",
                    f"--ChatBridgeApp.agent_lease_seconds={LEASE}",
                    *args,
                )
            )
        return made

    yield make
    for server in made:
        server.kill()


async def call(
    server: ServerProcess, method: str, path: str, body: Any = None, **headers: str
) -> tuple[int, Any]:
    response = await AsyncHTTPClient().fetch(
        f"{server.url}chatbridge/api/{path}",
        method=method,
        body=None if body is None else json.dumps(body),
        headers={"Authorization": f"token {server.token}", **headers},
        raise_error=False,
        request_timeout=30,
    )
    text = response.body.decode() if response.body else ""
    is_json = "json" in response.headers.get("Content-Type", "")
    return response.code, (json.loads(text) if is_json and text else text)


async def watcher(
    server: ServerProcess, session_id: str, after_seq: int = 0, cid: str | None = None
) -> EventStream:
    """An event stream on `server` watching the session from `after_seq`."""
    path = "/chatbridge/api/events" + (f"?cid={cid}" if cid else "")
    stream = await EventStream(server.port, path, {"Authorization": f"token {server.token}"}).open()
    cid = stream.welcome["connectionId"]
    status, body = await call(
        server, "POST", "watch", {"sessionId": session_id, "afterSeq": after_seq},
        **{"X-Connection-ID": cid},
    )  # fmt: skip
    assert status == 200, body
    return stream


async def history(server: ServerProcess, session_id: str) -> Events:
    status, body = await call(server, "GET", f"sessions/{session_id}/events?limit=1000")
    assert status == 200, body
    return list(body["events"])


async def send(server: ServerProcess, session_id: str, msg_id: str, text: str) -> tuple[int, Any]:
    body = {"sessionId": session_id, "clientMsgId": msg_id, "text": text}
    return await call(server, "POST", "send", body)


def answered(events: Events, text: str) -> bool:
    """The echo of `text` was shown complete."""
    return f"Echo: {text}" in answers(events).values()


def answers(events: Events) -> dict[str, str]:
    """Each finished answer's text, by messageId."""
    texts: dict[str, str] = {}
    done = set()
    for e in events:
        if e["type"] == "block_delta":
            texts[e["messageId"]] = texts.get(e["messageId"], "") + e["text"]
        elif e["type"] == "message_end":
            done.add(e["messageId"])
    return {m: t for m, t in texts.items() if m in done}


def assert_one_order(events: Events) -> None:
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))


async def test_watch_on_a_and_send_on_b_shows_every_event_once_in_order_on_both(
    two_servers: Callable[..., list[ServerProcess]],
) -> None:
    a, b = two_servers("--EchoAgent.chunk_delay=0.005")
    await asyncio.gather(a.start(), b.start())
    assert (await call(a, "POST", "sessions", {"sessionId": "s1"}))[0] == 201
    cid = new_cid()  # a stable connection: it can resume with Last-Event-ID
    on_a, on_b = await watcher(a, "s1", cid=cid), await watcher(b, "s1")  # b never saw it made
    for i in range(3):
        status, body = await send(b, "s1", f"m{i}", f"hello {i} from b")
        assert status == 202, body
    await on_a.wait_for(lambda s: answered(s.session_events("s1"), "hello 2 from b"), 30)
    await on_b.wait_for(lambda s: answered(s.session_events("s1"), "hello 2 from b"), 30)
    seen_a, seen_b = on_a.session_events("s1"), on_b.session_events("s1")
    assert seen_a == seen_b == await history(a, "s1") == await history(b, "s1")
    assert_one_order(seen_a)
    assert len(answers(seen_a)) == 3
    # A resume from a seq on the other process: exactly what came after it.
    later = await watcher(a, "s1", after_seq=4)
    await later.wait_events(len(seen_a) - 4, "s1")
    assert later.session_events("s1") == seen_a[4:]
    # Last-Event-ID: a stream cut on a resumes there with what b's sends made meanwhile.
    last_id = on_a.frames[-1].id
    on_a.cut()
    assert (await send(b, "s1", "m3", "while a was cut"))[0] == 202
    headers = {"Authorization": f"token {a.token}", "Last-Event-ID": str(last_id)}
    resumed = await EventStream(a.port, f"/chatbridge/api/events?cid={cid}", headers).open()
    assert resumed.status == 200, (resumed.status, resumed.body)
    assert resumed.welcome["resumed"] is True
    await resumed.wait_for(lambda s: answered(s.session_events("s1"), "while a was cut"), 30)
    assert seen_a + resumed.session_events("s1") == await history(a, "s1")
    for stream in (on_a, on_b, later, resumed):
        await stream.close()


async def test_concurrent_sends_from_a_and_b_get_one_order_and_no_duplicates(
    two_servers: Callable[..., list[ServerProcess]],
) -> None:
    a, b = two_servers("--EchoAgent.chunk_delay=0")
    await asyncio.gather(a.start(), b.start())
    assert (await call(a, "POST", "sessions", {"sessionId": "s1"}))[0] == 201
    sends = [
        send(server, "s1", f"{name}{i}", f"{name}{i}")
        for i in range(10)
        for name, server in (("a", a), ("b", b))
    ]
    results = await asyncio.gather(*sends)
    assert [status for status, _ in results] == [202] * 20, results
    assert len({body["seq"] for _, body in results}) == 20
    for server in (a, b):

        async def all_answered(server: ServerProcess = server) -> None:
            while len(answers(await history(server, "s1"))) < 20:
                await asyncio.sleep(0.05)

        await asyncio.wait_for(all_answered(), 60)
    events_a, events_b = await history(a, "s1"), await history(b, "s1")
    assert events_a == events_b
    assert_one_order(events_a)
    users = [e["clientMsgId"] for e in events_a if e["type"] == "user_message"]
    assert sorted(users) == sorted(f"{n}{i}" for i in range(10) for n in "ab")
    # One agent run per session: answers never interleave, each follows its message.
    starts = [e for e in events_a if e["type"] in ("message_start", "message_end")]
    assert [e["type"] for e in starts] == ["message_start", "message_end"] * 20


async def test_the_same_client_msg_id_to_a_and_b_at_once_is_accepted_once(
    two_servers: Callable[..., list[ServerProcess]],
) -> None:
    a, b = two_servers()
    await asyncio.gather(a.start(), b.start())
    assert (await call(a, "POST", "sessions", {"sessionId": "s1"}))[0] == 201
    for i in range(5):
        (sa, ba), (sb, bb) = await asyncio.gather(
            send(a, "s1", f"same{i}", "once"), send(b, "s1", f"same{i}", "once")
        )
        assert sorted([sa, sb]) == [200, 202], (ba, bb)
        assert ba["seq"] == bb["seq"] and sorted([ba["duplicate"], bb["duplicate"]]) == [
            False,
            True,
        ]
    users = [e for e in await history(b, "s1") if e["type"] == "user_message"]
    assert [u["clientMsgId"] for u in users] == [f"same{i}" for i in range(5)]


async def running_on(servers: list[ServerProcess], session_id: str) -> ServerProcess:
    """The server whose process runs the session's agent now (`running` is per process)."""
    while True:
        for server in servers:
            status, body = await call(server, "GET", f"sessions/{session_id}")
            if status == 200 and body["running"]:
                return server
        await asyncio.sleep(0.05)


@pytest.mark.timeout(120)
async def test_sigkill_of_the_answering_process_the_other_closes_it_and_answers_the_next(
    two_servers: Callable[..., list[ServerProcess]],
) -> None:
    a, b = two_servers("--EchoAgent.chunk_delay=0.05")
    await asyncio.gather(a.start(), b.start())
    assert (await call(a, "POST", "sessions", {"sessionId": "s1"}))[0] == 201
    words = " ".join(f"w{i}" for i in range(200))
    assert (await send(a, "s1", "long", words))[0] == 202
    assert (await send(b, "s1", "next", "after the kill"))[0] == 202  # queued behind it
    owner = await asyncio.wait_for(running_on([a, b], "s1"), 30)
    survivor = b if owner is a else a
    on_survivor = await watcher(survivor, "s1")
    await on_survivor.wait_for(
        lambda s: sum(e["type"] == "block_delta" for e in s.session_events("s1")) >= 5, 30
    )
    owner.kill()
    killed_at = asyncio.get_running_loop().time()
    await on_survivor.wait_for(lambda s: answered(s.session_events("s1"), "after the kill"), 60)
    events = on_survivor.session_events("s1")
    assert_one_order(events)
    cut = [e for e in events if e["type"] == "error"]
    assert len(cut) == 1 and "interrupted" in cut[0]["message"], cut
    first_answer = cut[0]["messageId"]
    closed = [e for e in events if e["type"] == "message_end" and e["messageId"] == first_answer]
    assert len(closed) == 1 and closed[0]["seq"] > cut[0]["seq"]
    # Within the lease plus a few seconds (the survivor's sweep and one answer).
    assert asyncio.get_running_loop().time() - killed_at < LEASE + 8
    assert events == await history(survivor, "s1")
    await on_survivor.close()


async def test_take_over_on_b_of_a_session_driven_from_a_detaches_a(
    two_servers: Callable[..., list[ServerProcess]],
) -> None:
    a, b = two_servers()
    await asyncio.gather(a.start(), b.start())
    assert (await call(a, "POST", "sessions", {"sessionId": "s1"}))[0] == 201
    on_a, on_b = await watcher(a, "s1"), await watcher(b, "s1")
    cid_a, cid_b = on_a.welcome["connectionId"], on_b.welcome["connectionId"]
    status, _ = await call(a, "POST", "attach", {"sessionId": "s1"}, **{"X-Connection-ID": cid_a})
    assert status == 200
    status, _ = await call(b, "POST", "attach", {"sessionId": "s1"}, **{"X-Connection-ID": cid_b})
    assert status == 200
    await on_a.wait_for(lambda s: any(f.event == "detached" for f in s.frames), 10)
    (detached,) = [f.data for f in on_a.frames if f.event == "detached"]
    assert detached == {"sessionId": "s1", "reason": "taken_over"}
    status, body = await call(a, "GET", "sessions/s1")
    assert body["driver"] is None  # a no longer counts its connection as the driver
    assert not any(f.event == "detached" for f in on_b.frames)
    for stream in (on_a, on_b):
        await stream.close()


@pytest.mark.timeout(120)
async def test_redis_killed_and_restarted_mid_run_503s_then_recovers_losing_nothing(
    two_servers: Callable[..., list[ServerProcess]], own_redis: RedisServer
) -> None:
    a, b = two_servers("--EchoAgent.chunk_delay=0.01", "--ChatBridgeApp.heartbeat_interval=0.2")
    await asyncio.gather(a.start(), b.start())
    assert (await call(a, "POST", "sessions", {"sessionId": "s1"}))[0] == 201
    on_a = await watcher(a, "s1")
    accepted = []
    for i in range(3):
        status, body = await send(a if i % 2 else b, "s1", f"before{i}", " ".join(["x"] * 50))
        assert status == 202, body
        accepted.append(f"before{i}")
    own_redis.kill()
    status, body = await send(a, "s1", "during", "while redis is away")
    assert status == 503, body
    response = await AsyncHTTPClient().fetch(
        f"{b.url}chatbridge/api/send",
        method="POST",
        body=json.dumps({"sessionId": "s1", "clientMsgId": "during", "text": "x"}),
        headers={"Authorization": f"token {b.token}"},
        raise_error=False,
    )
    assert response.code == 503 and response.headers.get("Retry-After")
    comments = on_a.comments
    await on_a.wait_for(lambda s: s.comments >= comments + 2, 10)  # still open, heartbeats
    assert not on_a.ended
    own_redis.start()
    status = 503
    while status == 503:  # the client's retry of the same message, until Redis is back
        status, body = await send(a, "s1", "during", "while redis is away")
        await asyncio.sleep(0.2)
    assert status == 202, body
    accepted.append("during")
    await on_a.wait_for(lambda s: answered(s.session_events("s1"), "while redis is away"), 60)
    for server in (a, b):
        assert server.process is not None and server.process.poll() is None  # no crash
        events = await history(server, "s1")
        users = [e["clientMsgId"] for e in events if e["type"] == "user_message"]
        assert users == accepted
        assert_one_order(events)
    assert on_a.session_events("s1") == await history(a, "s1")
    await on_a.close()


async def test_a_connection_that_moves_to_the_other_process_rewatches_after_its_last_seq(
    two_servers: Callable[..., list[ServerProcess]],
) -> None:
    a, b = two_servers()
    await asyncio.gather(a.start(), b.start())
    assert (await call(a, "POST", "sessions", {"sessionId": "s1"}))[0] == 201
    cid = new_cid()
    on_a = await watcher(a, "s1", cid=cid)
    assert (await send(a, "s1", "m1", "one"))[0] == 202
    await on_a.wait_for(lambda s: answered(s.session_events("s1"), "one"), 30)
    seen = on_a.session_events("s1")
    on_a.cut()
    assert (await send(a, "s1", "m2", "two"))[0] == 202  # made while the client moves
    # The proxy sends the same client to b: b has no state for that connection...
    headers = {"Authorization": f"token {b.token}", "Last-Event-ID": str(on_a.frames[-1].id)}
    on_b = await EventStream(b.port, f"/chatbridge/api/events?cid={cid}", headers).open()
    assert on_b.welcome["resumed"] is False
    # ...so the client watches again after the last seq it showed: seqs are the same
    # on every process, so it continues exactly where it was.
    status, _ = await call(
        b, "POST", "watch", {"sessionId": "s1", "afterSeq": seen[-1]["seq"]},
        **{"X-Connection-ID": cid},
    )  # fmt: skip
    assert status == 200
    await on_b.wait_for(lambda s: answered(s.session_events("s1"), "two"), 30)
    assert seen + on_b.session_events("s1") == await history(b, "s1")
    for stream in (on_a, on_b):
        await stream.close()


@pytest.mark.timeout(120)
async def test_sigkill_while_keeping_the_lease_after_an_answer_delays_the_next_by_the_lease(
    two_servers: Callable[..., list[ServerProcess]], own_redis: RedisServer
) -> None:
    # The process that answered keeps the session's lease a moment for the next message
    # (leases.LINGER). Killed then, the other process answers once the lease expires.
    a, b = two_servers()
    await asyncio.gather(a.start(), b.start())
    assert (await call(a, "POST", "sessions", {"sessionId": "s1"}))[0] == 201
    on_a, on_b = await watcher(a, "s1"), await watcher(b, "s1")
    assert (await send(a, "s1", "first", "before the kill"))[0] == 202
    await on_b.wait_for(lambda s: answered(s.session_events("s1"), "before the kill"), 30)
    lease = redis.Redis.from_url(own_redis.url, decode_responses=True).get("chatbridge:s:s1:lease")
    holder = a if lease is not None and lease.split(":")[0] in a.log.read_text() else b
    survivor, on_survivor = (b, on_b) if holder is a else (a, on_a)
    holder.kill()
    killed_at = asyncio.get_running_loop().time()
    assert (await send(survivor, "s1", "second", "after the kill"))[0] == 202
    await on_survivor.wait_for(lambda s: answered(s.session_events("s1"), "after the kill"), 60)
    assert asyncio.get_running_loop().time() - killed_at < LEASE + 8
    events = on_survivor.session_events("s1")
    assert_one_order(events)
    assert [e["type"] for e in events].count("message_start") == 2
    assert not [e for e in events if e["type"] == "error"]  # nothing was cut
    for stream in (on_a, on_b):
        await stream.close()
