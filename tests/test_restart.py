"""Real server processes killed with SIGKILL and started again on the same store file.

Each server start takes about two seconds, so each test does as much as it can
with two of them. `tests.slow_agent.SlowAgent` streams slowly enough for a kill
to land inside an answer, and records every run in a file shared by both
processes: "no second agent run" is counted, not inferred.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient

from jupyter_chatbridge.client import AsyncChatClient, ConnectionStatus, StatusChange
from jupyter_chatbridge.clock import FakeScheduler
from jupyter_chatbridge.server.bridge import INTERRUPTED_MESSAGE

from .server_process import ServerProcess
from .support import WAIT, eventually

REPO = Path(__file__).resolve().parent.parent
# Seconds between the slow agent's words: a kill right after a word lands well before
# the next one. A word a client was shown is already committed (a seq is a promise).
WORD_DELAY = 0.4

Events = list[dict[str, Any]]


@pytest.fixture
def make_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., ServerProcess]]:
    """Servers whose process can import `tests.slow_agent`; all killed at the end."""
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    )
    servers: list[ServerProcess] = []

    def make(name: str, *args: str) -> ServerProcess:
        root = tmp_path / name
        root.mkdir()
        server = ServerProcess(root, *args)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.kill()


def slow_server_args(store: Path, runs: Path) -> list[str]:
    return [
        f"--ChatBridgeApp.store_path={store}",
        "--ChatBridgeApp.agent_class=tests.slow_agent.SlowAgent",
        f"--SlowAgent.delay={WORD_DELAY}",
        f"--SlowAgent.runs_file={runs}",
    ]


async def rest(server: ServerProcess, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    response = await AsyncHTTPClient().fetch(
        f"{server.url}chatbridge/api/{path}",
        method=method,
        body=None if body is None else json.dumps(body),
        headers={"Authorization": f"token {server.token}"},
        raise_error=False,
    )
    text = response.body.decode() if response.body else ""
    if "json" not in response.headers.get("Content-Type", ""):
        return response.code, text  # Jupyter's own HTML 404 page
    return response.code, (json.loads(text) if text else None)


async def history_when(server: ServerProcess, done: Callable[[Events], bool]) -> Events:
    """The session's history, once `done(history)` holds (polling a live process)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while True:
        status, body = await rest(server, "GET", "sessions/s1/events")
        assert status == 200, body
        if done(body["events"]):
            return list(body["events"])
        assert loop.time() < deadline, body["events"]
        await asyncio.sleep(0.02)


def answer_to(seq: int, events: Events) -> Events:
    """The events of the answer to the user message with this seq."""
    return [e for e in events if e.get("messageId") == f"m{seq}"]


async def test_history_receipts_and_settings_survive_a_crash_mid_answer(
    make_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    store, runs = tmp_path / "store" / "sessions.sqlite3", tmp_path / "runs.txt"
    server = make_server("server", *slow_server_args(store, runs))
    await server.start()
    created = await rest(
        server, "POST", "sessions", {"sessionId": "s1", "settings": {"prefix": "P: "}}
    )
    assert created[0] == 201
    sends = {
        "m1": "finished",
        "m2": "cut short by the crash",
        "m3": "accepted before the crash",
    }
    receipts: dict[str, Any] = {}

    async def send(client_msg_id: str) -> tuple[int, Any]:
        body = {"sessionId": "s1", "clientMsgId": client_msg_id, "text": sends[client_msg_id]}
        return await rest(server, "POST", "send", body)

    status, receipts["m1"] = await send("m1")
    assert status == 202
    await history_when(server, lambda ev: any(e["type"] == "message_end" for e in ev))
    for client_msg_id in ("m2", "m3"):  # m3 waits behind m2: accepted, never started
        status, receipts[client_msg_id] = await send(client_msg_id)
        assert status == 202
    m2_seq = receipts["m2"]["seq"]
    before = await history_when(
        server, lambda ev: [e["type"] for e in answer_to(m2_seq, ev)].count("block_delta") == 2
    )
    server.kill()

    await server.start()
    status, described = await rest(server, "GET", "sessions/s1")
    assert status == 200 and described["settings"] == {"prefix": "P: "}
    m3_seq = receipts["m3"]["seq"]
    after = await history_when(
        server, lambda ev: any(e["type"] == "message_end" for e in answer_to(m3_seq, ev))
    )
    assert after[: len(before)] == before  # everything from before the crash, unchanged
    assert [e["seq"] for e in after] == list(range(1, len(after) + 1))
    closed, answered = after[len(before) : len(before) + 2], after[len(before) + 2 :]
    assert closed == [
        {
            "type": "error",
            "sessionId": "s1",
            "seq": len(before) + 1,
            "message": INTERRUPTED_MESSAGE,
            "messageId": f"m{m2_seq}",
        },
        {
            "type": "message_end",
            "sessionId": "s1",
            "seq": len(before) + 2,
            "messageId": f"m{m2_seq}",
            "reason": "interrupted",
        },
    ]
    # The message accepted before the crash is answered by the new process, with the
    # session's settings handed to its agent.
    assert answered[0]["type"] == "message_start" and answered[0]["replyTo"] == m3_seq
    text = "".join(e["text"] for e in answered if e["type"] == "block_delta")
    assert text == "P: accepted before the crash "
    status, described = await rest(server, "GET", "sessions/s1")
    assert described["running"] is False and described["lastSeq"] == len(after)

    # Resends after the restart are duplicates with their first seq, and run nothing.
    for client_msg_id in ("m1", "m2", "m3"):
        status, again = await send(client_msg_id)
        assert status == 200 and again == {**receipts[client_msg_id], "duplicate": True}
    final = await history_when(server, lambda ev: True)
    assert final == after
    starts = [e["replyTo"] for e in final if e["type"] == "message_start"]
    assert sorted(starts) == sorted(r["seq"] for r in receipts.values())
    assert runs.read_text().split() == ["m1", "m2", "m3"]  # m2 was never run again


async def test_a_client_keeps_exactly_once_delivery_across_a_restart(
    make_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    store, runs = tmp_path / "store" / "sessions.sqlite3", tmp_path / "runs.txt"
    server = make_server("server", *slow_server_args(store, runs))
    await server.start()
    clock = FakeScheduler()
    statuses: list[StatusChange] = []
    welcomes: Events = []
    client = AsyncChatClient(
        server.url,
        server.token,
        scheduler=clock,
        on_status=statuses.append,
        on_frame=lambda kind, data: welcomes.append(data) if kind == "welcome" else None,
    )
    seen: Events = []
    try:
        session = await client.session("s1")
        session.add_listener(seen.append)
        assert await session.ask("before") == "Slow: before "
        session.send("cut short by the crash")
        # The client has seen the start of that answer when the server dies.
        await eventually(lambda: [e["type"] for e in seen].count("block_delta") == 4)
        seen_before_crash = len(seen)
        server.kill()
        await eventually(lambda: client.stream.status is ConnectionStatus.RECONNECTING)

        await server.start()
        clock.advance(statuses[-1].retry_in or 0)  # the client's backoff runs out
        await eventually(lambda: client.stream.status is ConnectionStatus.CONNECTED)
        assert welcomes[-1]["epoch"] != welcomes[0]["epoch"]
        assert welcomes[-1]["resumed"] is False
        # It re-watched from the last seq it had and got only what it had not seen:
        # the close of the answer the crash cut short.
        await eventually(lambda: len(seen) == seen_before_crash + 2)
        assert [(e["type"], e.get("message")) for e in seen[seen_before_crash:]] == [
            ("error", INTERRUPTED_MESSAGE),
            ("message_end", None),
        ]
        # The session survived: same client, same session object, on the new server.
        assert session.lost is None
        assert await session.ask("after") == "Slow: after "
        assert [e["seq"] for e in seen] == list(range(1, len(seen) + 1))
        assert seen == await session.history()
        assert client.stream.connection_id == client.cid
    finally:
        await client.close()


async def test_a_store_it_cannot_use_keeps_chatbridge_off_with_a_clear_error(
    make_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    damaged = tmp_path / "damaged.sqlite3"
    garbage = b"not a database, whatever the name says\n" * 100
    damaged.write_bytes(garbage)
    blocker = tmp_path / "a-regular-file"
    blocker.write_text("a store path cannot go through a file")
    unwritable = blocker / "sessions.sqlite3"
    cases = [
        (make_server("damaged", f"--ChatBridgeApp.store_path={damaged}"), damaged, "is damaged"),
        (
            make_server("unwritable", f"--ChatBridgeApp.store_path={unwritable}"),
            unwritable,
            "cannot create its directory",
        ),
    ]
    # Jupyter itself comes up; chatbridge must not (started side by side to save time).
    await asyncio.gather(*(server.start(ready="api/status") for server, _, _ in cases))
    for server, path, problem in cases:
        status, _ = await rest(server, "GET", "sessions")
        assert status == 404  # never an empty store served as if nothing had been there
        log = server.log.read_text()
        assert f"chatbridge session store {path}: {problem}" in log
        assert "Move the file aside or delete it to start with no sessions" in log
        assert "c.ChatBridgeApp.store_path" in log
        assert "jupyter_chatbridge | extension failed loading" in log
    assert damaged.read_bytes() == garbage
