"""Faults under load: random stream cuts, failing sends, reconnect storms, slow consumers.

Everything is bounded and on loopback. Cut points come from a seeded RNG over the
events received (not from wall-clock sleeps), and every client retry waits on the
client's fake clock, which the test moves as soon as the client asks to wait.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from typing import Any

import pytest

from jupyter_chatbridge.client import AsyncChatClient, ConnectionStatus, StatusChange
from jupyter_chatbridge.clock import FakeScheduler
from jupyter_chatbridge.server.bridge import ChatBridge
from jupyter_chatbridge.testing import Fault, FaultPlan

from .agents import BurstAgent
from .support import StreamFactory, eventually, new_cid


class SelfAdvancingClient:
    """A client on a fake clock that moves the moment the client starts a wait."""

    def __init__(self, server_url: str, token: str, **kwargs: Any) -> None:
        self.clock = FakeScheduler()
        self.statuses: list[StatusChange] = []
        self.sends: list[Any] = []
        loop = asyncio.get_running_loop()

        def on_status(change: StatusChange) -> None:
            self.statuses.append(change)
            if change.status is ConnectionStatus.RECONNECTING:
                loop.call_soon(self.clock.advance, change.retry_in)

        def on_send(event: Any) -> None:
            self.sends.append(event)
            if event.type == "send_failed" and event.will_retry:
                loop.call_soon(self.clock.advance, event.retry_in)

        self.client = AsyncChatClient(
            server_url, token, scheduler=self.clock, on_status=on_status, on_send=on_send, **kwargs
        )


@pytest.fixture
def chaos_client(server_url: str, jp_serverapp: Any, jp_asyncio_loop: Any) -> Iterator[Any]:
    made: list[SelfAdvancingClient] = []

    def factory(**kwargs: Any) -> SelfAdvancingClient:
        wrapper = SelfAdvancingClient(server_url, jp_serverapp.identity_provider.token, **kwargs)
        made.append(wrapper)
        return wrapper

    yield factory
    for wrapper in made:
        jp_asyncio_loop.run_until_complete(wrapper.client.close())


@pytest.mark.chatbridge(agent_class=BurstAgent)
async def test_chaos_stream_delivers_5000_events_exactly_once(
    chaos_client: Any, bridge: ChatBridge, clock: FakeScheduler
) -> None:
    chaos = chaos_client()
    client: AsyncChatClient = chaos.client
    session = await client.session("s1")
    rng = random.Random(20261121)
    received: list[dict] = []
    state = {"next_cut": rng.randint(20, 200), "cuts": 0, "server_cuts": 0}

    def on_event(event: dict) -> None:
        received.append(event)
        if len(received) >= state["next_cut"]:
            state["next_cut"] = len(received) + rng.randint(20, 200)
            state["cuts"] += 1
            stream = bridge.streams.get(client.cid)
            if rng.random() < 0.5 and stream is not None:
                state["server_cuts"] += 1
                asyncio.get_running_loop().call_soon(stream.close)  # the server ends it
            else:
                asyncio.get_running_loop().call_soon(client.stream.reconnect_now)  # the net drops

    session.add_listener(on_event)
    await session.send_and_wait("go")
    await eventually(lambda: bool(received) and received[-1]["type"] == "message_end", 60)
    last = bridge.sessions.get("s1").log.last_seq
    assert last == 1 + 1 + BurstAgent.chunks + 1
    assert [e["seq"] for e in received] == list(range(1, last + 1))
    deltas = [e["text"] for e in received if e["type"] == "block_delta"]
    assert deltas == [f"{i} " for i in range(BurstAgent.chunks)]
    assert state["cuts"] >= 25 and 0 < state["server_cuts"] < state["cuts"]

    # Nothing leaks: once the client is gone and the TTL passes, the server holds no state.
    await client.close()
    await eventually(lambda: len(bridge.streams) == 0)
    clock.advance(bridge.limits.inactive_ttl)
    assert len(bridge.connections) == 0
    assert bridge.sessions.get("s1").watchers == set()
    assert bridge.sessions.watched_by(client.cid) == frozenset()


async def test_chaos_send_500_messages_arrive_exactly_once_in_order(
    chaos_client: Any, jp_serverapp: Any, bridge: ChatBridge
) -> None:
    chaos = chaos_client()
    client: AsyncChatClient = chaos.client
    await client.session("s1")
    rng = random.Random(500)
    faults = [
        lambda: Fault.status(500),
        lambda: Fault.status(503),
        lambda: Fault.status(429, retry_after=rng.randint(1, 5)),
        Fault.drop_before,
        Fault.drop_after,
    ]
    plan = FaultPlan()
    injected = 0
    accepted_while_unanswered = 0  # messages the server took but whose answer was lost
    for _ in range(500):
        # At most three failures per message: its last allowed retry gets through.
        scripted = [rng.choice(faults)() for _ in range(rng.choice([0, 0, 0, 1, 1, 2, 3]))]
        plan.add("send", *scripted, Fault.none())
        injected += len(scripted)
        accepted_while_unanswered += any(f.kind == "drop_after" for f in scripted)
    jp_serverapp.web_app.settings["chatbridge_faults"] = plan

    ids = [client.send("s1", f"message {i}") for i in range(100)]
    for i in range(100, 500):  # keep the outbox under its 100-message bound
        await eventually(lambda: len(client.outbox) < 100, 60)
        ids.append(client.send("s1", f"message {i}"))
    await asyncio.wait_for(client.outbox.drain(), 120)

    history = await client.history("s1")
    assert [e["clientMsgId"] for e in history if e["type"] == "user_message"] == ids
    accepted = [e for e in chaos.sends if e.type == "send_accepted"]
    assert [e.client_msg_id for e in accepted] == ids
    # Their retry was answered from the receipt: no second user_message, no second run.
    assert sum(e.duplicate for e in accepted) == accepted_while_unanswered > 0
    assert sum(1 for e in chaos.sends if e.type == "send_failed") == injected > 300
    assert not [e for e in chaos.sends if e.type == "send_failed" and not e.will_retry]

    # Four failures in a row: the caller is told, once, that it was not delivered.
    plan.add("send", *(Fault.status(500) for _ in range(4)))
    failed_id = client.send("s1", "doomed")
    await client.outbox.drain()
    final = [e for e in chaos.sends if e.type == "send_failed" and not e.will_retry]
    assert [(e.client_msg_id, e.attempt) for e in final] == [(failed_id, 4)]
    assert client.outbox.failed == [failed_id]


async def test_reconnect_storm_leaves_one_live_stream_and_no_stale_timer(
    streams: StreamFactory, api: Any, bridge: ChatBridge, clock: FakeScheduler
) -> None:
    await api.ok("POST", "sessions", body={"sessionId": "s1"})
    cid = new_cid()
    first = await streams.open(cid)
    await api.ok("POST", "watch", body={"sessionId": "s1"}, headers={"X-Connection-ID": cid})
    await api.ok("POST", "attach", body={"sessionId": "s1"}, headers={"X-Connection-ID": cid})
    storm = [first]
    for i in range(50):
        opened = await streams.open(cid, last_event_id=0)
        storm.append(opened)
        if i % 3 == 0:
            storm[-2].cut()  # some old streams vanish abruptly as well
    await eventually(lambda: sum(not s.ended for s in storm) == 1)
    live = [s for s in storm if not s.ended]
    assert live == [storm[-1]] and bridge.streams.get(cid) is not None
    connection = bridge.connections.get(cid)
    assert connection.active and clock.pending == 1  # only the heartbeat
    clock.advance(3600)
    assert bridge.connections.get(cid) is connection
    assert bridge.sessions.get("s1").driver == cid and bridge.sessions.get("s1").watchers == {cid}
    await api.ok("POST", "send", body={"sessionId": "s1", "clientMsgId": "m1", "text": "still"})
    events = await storm[-1].wait_events(5)
    assert [e["seq"] for e in events] == [1, 2, 3, 4, 5]


@pytest.mark.chatbridge(max_stream_buffer_bytes=256 * 1024)
async def test_a_slow_consumer_is_dropped_without_slowing_others_and_can_resume(
    api: Any,
    streams: StreamFactory,
    bridge: ChatBridge,
    jp_http_port: int,
    jp_base_url: str,
    jp_serverapp: Any,
) -> None:
    await api.ok("POST", "sessions", body={"sessionId": "s1"})
    # A reader that connects, then never reads again, with a tiny receive window.
    import socket

    slow_cid = new_cid()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", jp_http_port))
    token = jp_serverapp.identity_provider.token
    sock.sendall(
        f"GET {jp_base_url}chatbridge/api/events?cid={slow_cid} HTTP/1.1\r\n"
        f"Host: 127.0.0.1\r\nAuthorization: token {token}\r\n\r\n".encode()
    )
    await eventually(lambda: bridge.streams.get(slow_cid) is not None)
    await api.ok("POST", "watch", body={"sessionId": "s1"}, headers={"X-Connection-ID": slow_cid})
    fast_cid = new_cid()
    fast = await streams.open(fast_cid)
    await api.ok("POST", "watch", body={"sessionId": "s1"}, headers={"X-Connection-ID": fast_cid})

    big = "x" * 60000  # one word: a 60 kB user_message and a 60 kB echo per send
    for i in range(30):
        await api.ok("POST", "send", body={"sessionId": "s1", "clientMsgId": f"m{i}", "text": big})
    total = 30 * 5
    await fast.wait_events(total)
    assert [e["seq"] for e in fast.session_events()] == list(range(1, total + 1))
    # The slow stream was cut; its connection state waits for it to come back.
    assert bridge.streams.get(slow_cid) is None
    assert not bridge.connections.get(slow_cid).active
    assert slow_cid in bridge.sessions.get("s1").watchers
    sock.close()
    # It comes back having read only frame 1: the whole 9 MB it missed is replayed.
    back = await streams.open(slow_cid, last_event_id=1)
    assert back.welcome["resumed"] is True and back.welcome["gap"] is False
    assert back.welcome["replayed"] == total - 1
    await back.wait_events(total - 1)
    assert [e["seq"] for e in back.session_events()] == list(range(2, total + 1))
    assert bridge.streams.get(slow_cid) is not None
