"""Stop from the Python client: `AsyncSession.stop()`, the blocking `Session.stop()`,
and what `ask()` gives for a stopped answer. EchoAgent waits an hour between chunks,
so an answer is mid-stream whenever the test stops it (no timer is waited for)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from jupyter_chatbridge.client import AnswerStopped, AsyncChatClient, ChatClient
from jupyter_chatbridge.server.bridge import ChatBridge

from .support import eventually

STALLED = pytest.mark.chatbridge(agent={"chunk_delay": 3600.0})


@pytest.fixture
def client(server_url: str, token: str, jp_asyncio_loop: Any) -> Iterator[AsyncChatClient]:
    made = AsyncChatClient(server_url, token)
    yield made
    jp_asyncio_loop.run_until_complete(made.close())


@STALLED
async def test_stop_makes_a_waiting_ask_raise_answer_stopped_with_the_partial_text(
    client: AsyncChatClient,
) -> None:
    session = await client.session("s1")
    received: list[dict[str, Any]] = []
    session.add_listener(received.append)
    asking = asyncio.ensure_future(session.ask("hello world"))
    await eventually(lambda: any(e["type"] == "block_delta" for e in received))

    result = await session.stop()
    assert (result["stopped"], result["reason"]) == ("m1", "stopped")
    with pytest.raises(AnswerStopped) as stopped:
        await asking
    assert stopped.value.text == "Echo: "
    again = await session.stop()
    assert (again["stopped"], again["reason"]) == (None, "not_running")
    named = await session.stop("m1")
    assert (named["stopped"], named["reason"]) == (None, "already_ended")


@STALLED
async def test_the_blocking_session_stop_and_the_next_message_is_answered(
    server_url: str, token: str, bridge: ChatBridge
) -> None:
    def script() -> tuple[dict[str, Any], dict[str, Any], list[tuple[Any, ...]], str]:
        with ChatClient(server_url, token) as chat:
            demo = chat.session("demo")
            first = demo.send("one")
            second = demo.send("two")
            events = demo.events(timeout=10)
            seen = []
            for event in events:
                seen.append((event["type"], event.get("messageId"), event.get("reason")))
                if event["type"] == "block_delta" and event["messageId"] == f"m{first.seq}":
                    stopped_first = demo.stop()
                if event["type"] == "block_delta" and event["messageId"] == f"m{second.seq}":
                    stopped_second = demo.stop(f"m{second.seq}")
                if event["type"] == "message_end" and event["messageId"] == f"m{second.seq}":
                    return stopped_first, stopped_second, seen, f"m{second.seq}"
            raise AssertionError(seen)

    first, second, seen, m2 = await asyncio.get_running_loop().run_in_executor(None, script)
    assert (first["stopped"], first["reason"]) == ("m1", "stopped")
    assert (second["stopped"], second["reason"]) == (m2, "stopped")
    assert [s for s in seen if s[0] in {"message_start", "message_end"}] == [
        ("message_start", "m1", None),
        ("message_end", "m1", "stopped"),
        ("message_start", m2, None),
        ("message_end", m2, "stopped"),
    ]
    assert not bridge.runner.runs
