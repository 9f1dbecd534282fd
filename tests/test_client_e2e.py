"""The Python client against a real in-process server: resume, exactly-once, send faults,
session-unknown fast path. The client runs on its own fake clock."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from jupyter_chatbridge.client import (
    AsyncChatClient,
    AsyncSession,
    ChatClient,
    ConnectionStatus,
    OutboxFull,
    SessionSocket,
    SessionUnknown,
    StatusChange,
)
from jupyter_chatbridge.client.transport import HttpTransport
from jupyter_chatbridge.clock import FakeScheduler
from jupyter_chatbridge.server.bridge import ChatBridge
from jupyter_chatbridge.testing import Fault, FaultPlan

from .agents import GateAgent
from .support import eventually

ClientFactory = Callable[..., AsyncChatClient]


@pytest.fixture
def client_clock() -> FakeScheduler:
    return FakeScheduler()


@pytest.fixture
def make_client(
    server_url: str, token: str, client_clock: FakeScheduler, jp_asyncio_loop: Any
) -> Iterator[ClientFactory]:
    made: list[AsyncChatClient] = []

    def factory(**kwargs: Any) -> AsyncChatClient:
        kwargs.setdefault("scheduler", client_clock)
        client = AsyncChatClient(server_url, kwargs.pop("token", token), **kwargs)
        made.append(client)
        return client

    yield factory
    for client in made:
        jp_asyncio_loop.run_until_complete(client.close())


async def _watching(
    make_client: ClientFactory, **options: Any
) -> tuple[AsyncChatClient, AsyncSession, list[StatusChange], list[dict]]:
    """A client watching session "s1", recording its status changes and the events."""
    statuses: list[StatusChange] = []
    client = make_client(on_status=statuses.append, **options)
    session = await client.session("s1")
    received: list[dict] = []
    session.add_listener(received.append)
    return client, session, statuses, received


def _seqs(events: list[dict]) -> list[int]:
    return [e["seq"] for e in events]


async def _reconnect(client: AsyncChatClient, clock: FakeScheduler, statuses: list) -> None:
    """Let a cut stream come back: wait until it is waiting to retry, then move time."""
    await eventually(lambda: client.stream.status is ConnectionStatus.RECONNECTING)
    clock.advance(statuses[-1].retry_in)
    await eventually(lambda: client.stream.status is ConnectionStatus.CONNECTED)


async def test_cid_is_made_once_and_the_server_sees_it(
    make_client: ClientFactory, bridge: ChatBridge
) -> None:
    client = make_client()
    await client.connect()
    assert client.cid.startswith("cid-")
    assert client.stream.connection_id == client.cid
    assert bridge.connections.get(client.cid).stable


@pytest.mark.chatbridge(agent_class=GateAgent)
async def test_stream_cut_mid_answer_delivers_every_event_exactly_once_in_order(
    make_client: ClientFactory,
    bridge: ChatBridge,
    client_clock: FakeScheduler,
    gate: asyncio.Event,
) -> None:
    client, session, statuses, received = await _watching(make_client)
    await session.send_and_wait("first")
    await eventually(lambda: any(e["type"] == "block_delta" for e in received))
    cid = client.cid

    # The server ends the stream mid-answer (proxy timeout, deploy); the rest of the
    # answer is produced while the client is away.
    bridge.streams.get(cid).close()
    await eventually(lambda: client.stream.status is ConnectionStatus.RECONNECTING)
    gate.set()
    await eventually(lambda: bridge.sessions.get("s1").running is False)
    assert len(received) < bridge.sessions.get("s1").log.last_seq
    await _reconnect(client, client_clock, statuses)

    # A hard cut from the client side (Wi-Fi gone) with a second answer in flight.
    session.send("second")
    client.stream.reconnect_now()
    await _reconnect(client, client_clock, statuses)
    last = await _last_seq(client, "s1", 10)
    await eventually(lambda: bool(received) and received[-1]["seq"] == last)
    assert _seqs(received) == list(range(1, last + 1))
    assert client.stream.connection_id == cid
    assert len(bridge.connections) == 1


async def _last_seq(client: AsyncChatClient, sid: str, at_least: int) -> int:
    async def _poll() -> int:
        while (state := await client.get_session(sid))["lastSeq"] < at_least or state["running"]:
            await asyncio.sleep(0.002)
        return int(state["lastSeq"])

    return await asyncio.wait_for(_poll(), 10)


@pytest.mark.chatbridge(replay_buffer_size=2)
async def test_gap_is_recovered_by_rewatching_after_the_last_seq(
    make_client: ClientFactory, bridge: ChatBridge, client_clock: FakeScheduler
) -> None:
    client, session, statuses, received = await _watching(make_client)
    await session.ask("one")
    bridge.streams.get(client.cid).close()
    await eventually(lambda: client.stream.status is ConnectionStatus.RECONNECTING)
    # Five events while away, the buffer keeps two: the welcome will say gap.
    await client.send_and_wait("s1", "two words")
    await _last_seq(client, "s1", 10)
    welcomes: list[dict] = []
    client._on_frame = lambda kind, data: welcomes.append(data) if kind == "welcome" else None
    await _reconnect(client, client_clock, statuses)
    await eventually(lambda: bool(received) and received[-1]["seq"] == 11)
    assert welcomes[-1]["gap"] is True
    assert _seqs(received) == list(range(1, 12))


async def test_new_epoch_makes_the_client_rewatch(
    make_client: ClientFactory, bridge: ChatBridge, client_clock: FakeScheduler
) -> None:
    client, session, statuses, received = await _watching(make_client)
    await session.ask("one")
    # What a restart looks like to a client: new epoch, connection state gone.
    bridge.epoch = "restarted"
    bridge.sessions.release_connection(client.cid)
    bridge.streams.get(client.cid).close()
    await _reconnect(client, client_clock, statuses)
    assert client.stream.epoch == "restarted"
    await eventually(lambda: client.cid in bridge.sessions.get("s1").watchers)
    await session.ask("two")
    assert _seqs(received) == list(range(1, 11))


async def test_sends_survive_faults_without_duplicates_or_reordering(
    make_client: ClientFactory, jp_serverapp: Any, bridge: ChatBridge, client_clock: FakeScheduler
) -> None:
    sends: list[Any] = []
    client = make_client(on_send=sends.append)
    await client.session("s1")
    plan = FaultPlan().add(
        "send",
        Fault.status(500),  # message 0: three failures, the last allowed retry passes
        Fault.drop_before(),
        Fault.status(429, retry_after=7),
        Fault.none(),
        Fault.drop_after(),  # message 1: accepted, but the answer was lost
        Fault.none(),  # ... so its retry is answered as a duplicate
        Fault.status(503),  # message 2
    )
    jp_serverapp.web_app.settings["chatbridge_faults"] = plan
    ids = [client.send("s1", f"message {i}") for i in range(5)]

    def retries() -> list[Any]:
        return [e for e in sends if e.type == "send_failed" and e.will_retry]

    def accepted_count() -> int:
        return sum(e.type == "send_accepted" for e in sends)

    waited = 0
    while accepted_count() < 5:
        # Each retry waits on the client's clock: move it exactly as far as asked.
        await eventually(lambda done=waited: len(retries()) > done or accepted_count() == 5)
        if len(retries()) > waited:
            client_clock.advance(retries()[waited].retry_in)
            waited += 1
    history = await client.history("s1")
    users = [e["clientMsgId"] for e in history if e["type"] == "user_message"]
    assert users == ids
    accepted = [e for e in sends if e.type == "send_accepted"]
    assert [e.client_msg_id for e in accepted] == ids
    assert [e.retry_in for e in sends if e.type == "send_failed"] == [3.0, 3.0, 7.0, 3.0, 3.0]
    assert all(e.will_retry for e in sends if e.type == "send_failed")
    duplicate = [e for e in accepted if e.duplicate]
    assert len(duplicate) == 1  # the one whose answer was dropped after acceptance
    starts = [e for e in history if e["type"] == "message_start"]
    assert len(starts) == 5


@pytest.mark.chatbridge(max_message_bytes=8)
async def test_4xx_is_final_at_once(make_client: ClientFactory) -> None:
    sends: list[Any] = []
    client = make_client(on_send=sends.append)
    await client.session("s1")
    client.send("s1", "far too long")
    ok = client.send("s1", "short")
    await client.outbox.drain()
    failed = [e for e in sends if e.type == "send_failed"]
    assert len(failed) == 1 and failed[0].will_retry is False and failed[0].attempt == 1
    assert failed[0].status == 413 and "too_large" in failed[0].error
    assert [e.client_msg_id for e in sends if e.type == "send_accepted"] == [ok]


async def test_the_101st_queued_send_is_refused(make_client: ClientFactory) -> None:
    client = make_client()
    await client.session("s1")
    ids = [client.send("s1", f"m {i}") for i in range(100)]
    with pytest.raises(OutboxFull, match="100 messages"):
        client.send("s1", "one too many")
    await client.outbox.drain()
    history = await client.history("s1")
    assert [e["clientMsgId"] for e in history if e["type"] == "user_message"] == ids


async def test_bad_token_fails_at_once_without_retrying(make_client: ClientFactory) -> None:
    statuses: list[StatusChange] = []
    client = make_client(token="wrong", on_status=statuses.append)
    with pytest.raises(Exception, match="failed"):
        await client.connect()
    assert [s.status for s in statuses] == [ConnectionStatus.CONNECTING, ConnectionStatus.FAILED]
    assert "403" in (statuses[-1].error or "")


async def test_unknown_session_on_rewatch_is_reported_not_retried(
    make_client: ClientFactory, bridge: ChatBridge, client_clock: FakeScheduler
) -> None:
    statuses: list[StatusChange] = []
    client = make_client(on_status=statuses.append)
    session = await client.session("s1")
    bridge.streams.get(client.cid).close()
    await eventually(lambda: client.stream.status is ConnectionStatus.RECONNECTING)
    bridge.epoch = "restarted"
    bridge.sessions.delete("s1")  # lost in the "restart"
    await _reconnect(client, client_clock, statuses)
    await eventually(lambda: session.lost is not None)
    assert session.lost == "session_unknown"


# -- the session socket ----------------------------------------------------------------------


@pytest.mark.parametrize("origin", [None, "http://127.0.0.1"])
async def test_socket_to_unknown_session_gives_up_after_one_attempt(
    server_url: str, token: str, origin: str | None
) -> None:
    statuses: list[StatusChange] = []
    clock = FakeScheduler()
    socket = SessionSocket(
        HttpTransport(server_url, token),
        "ghost",
        origin=origin,
        on_status=statuses.append,
        scheduler=clock,
    )
    await socket.wait_closed()
    assert socket.session_unknown is True
    assert socket.attempts_made == 1 and clock.pending == 0
    assert statuses[-1] == StatusChange(ConnectionStatus.FAILED, error="session unknown")
    if origin:
        assert socket.last_close == (4404, "session unknown")


async def test_socket_closed_by_delete_makes_zero_reconnect_attempts(
    server_url: str, token: str, make_client: ClientFactory
) -> None:
    client = make_client()
    await client.create_session("s1")
    events: list[dict] = []
    clock = FakeScheduler()
    socket = SessionSocket(
        HttpTransport(server_url, token), "s1", on_event=events.append, scheduler=clock
    )
    ack = await socket.send("hello")
    assert ack["type"] == "ack" and ack["seq"] == 1
    await eventually(lambda: any(e["type"] == "message_end" for e in events))
    await client.delete_session("s1")
    await socket.wait_closed()
    assert events[-1]["type"] == "session_ended"
    assert socket.last_close == (4404, "session ended")
    assert socket.attempts_made == 1 and socket.session_unknown and clock.pending == 0
    with pytest.raises(SessionUnknown):
        await socket.send("anyone there?")


async def test_socket_reconnects_after_a_transient_close_and_resumes(
    server_url: str, token: str, make_client: ClientFactory, bridge: ChatBridge
) -> None:
    client = make_client()
    await client.create_session("s1")
    events: list[dict] = []
    statuses: list[StatusChange] = []
    clock = FakeScheduler()
    socket = SessionSocket(
        HttpTransport(server_url, token),
        "s1",
        on_event=events.append,
        on_status=statuses.append,
        scheduler=clock,
    )
    await socket.send("one")
    await eventually(lambda: any(e["type"] == "message_end" for e in events))
    for server_socket in list(bridge.fanout.sockets["s1"]):
        server_socket.close(1011, "server hiccup")
    await eventually(lambda: socket.status is ConnectionStatus.RECONNECTING)
    await client.send_and_wait("s1", "two")
    clock.advance(statuses[-1].retry_in)
    await eventually(lambda: len(events) >= 10)
    assert _seqs(events) == list(range(1, 11))
    assert socket.attempts_made == 2
    await socket.close()


# -- the blocking client ---------------------------------------------------------------------


async def test_blocking_client_for_scripts(server_url: str, token: str, bridge: ChatBridge) -> None:
    def script() -> tuple[str, list[str], str]:
        with ChatClient(server_url, token) as client:
            demo = client.session("demo")
            answer = demo.ask("hi there")
            receipt = demo.send("again")
            first_after = next(e for e in demo.events(timeout=10) if e["seq"] > receipt.seq)
            types = [first_after["type"]]
            return answer, types, client.cid

    answer, types, cid = await asyncio.get_running_loop().run_in_executor(None, script)
    assert answer == "Echo: hi there"
    assert types == ["message_start"]
    # Closing the client ended its stream; the server keeps its state for the TTL.
    await eventually(lambda: not bridge.connections.get(cid).active)


async def test_kernels_can_discover_the_server(
    server_url: str, token: str, jp_serverapp: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jupyter_chatbridge.client import ServerNotFound, discover_server

    # What a real server does once bound (pytest-jupyter never runs its post-start):
    await jp_serverapp.extension_manager.start_all_extensions()
    # ... the extension exported for the kernels it starts:
    assert discover_server() == (jp_serverapp.connection_url, token)
    client = AsyncChatClient()  # nothing configured
    try:
        await client.connect()
    finally:
        await client.close()
    # The fallback: the running-server file of the server whose pid is JPY_PARENT_PID.
    monkeypatch.delenv("JUPYTER_CHATBRIDGE_URL")
    monkeypatch.setenv("JPY_PARENT_PID", str(os.getpid()))
    url, found_token = discover_server()
    assert url.endswith(jp_serverapp.base_url) and found_token == token
    monkeypatch.setenv("JPY_PARENT_PID", "1")
    with pytest.raises(ServerNotFound, match="server_url="):
        discover_server()


async def test_a_rewound_history_is_followed_not_skipped(
    make_client: ClientFactory, bridge: ChatBridge, client_clock: FakeScheduler
) -> None:
    """A server that crashed before committing its newest events reuses their seqs:
    the client must deliver the new events under those seqs, not drop them as seen."""
    frames: list[tuple[str, dict]] = []
    client, session, statuses, received = await _watching(
        make_client, on_frame=lambda k, d: frames.append((k, d))
    )
    await session.ask("one two three")  # seqs 1..7
    bridge.streams.get(client.cid).close()
    await eventually(lambda: client.stream.status is ConnectionStatus.RECONNECTING)
    # The "new process": same session id, history only up to seq 2.
    bridge.epoch = "after-crash"
    old = bridge.sessions.delete("s1")
    fresh = bridge.sessions.create("s1", 0)
    fresh.log.load(old.log.after(0, 2), 2, [])  # what a restore from that store does
    await _reconnect(client, client_clock, statuses)
    await eventually(lambda: any(kind == "rewound" for kind, _ in frames))
    assert ("rewound", {"sessionId": "s1", "lastSeq": 2, "delivered": 7}) in frames
    await client.send_and_wait("s1", "again")
    await eventually(lambda: received[-1]["type"] == "message_end" and received[-1]["seq"] == 7)
    assert [e["seq"] for e in received] == [1, 2, 3, 4, 5, 6, 7, 3, 4, 5, 6, 7]
    assert received[7]["type"] == "user_message" and received[7]["text"] == "again"
