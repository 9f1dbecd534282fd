"""SIGKILL during a fast streamed answer, on the default store: a seq once shown keeps its meaning.

A real `jupyter server` process runs the embedded `EchoAgent` at token rate
(`chunk_delay` 10 ms and 50 ms) with every store default. A client that stays
connected across the crash sees part of an answer; the process is killed at a
seeded random point of it and started again on the same store. After each
restart:

- every event the client had been shown is in the server's history at the same
  seq, unchanged (the rule of docs/protocol.md, "A seq is a promise");
- the cut answer ends, visibly, as interrupted, in what the client shows;
- a new message round-trips, and what the client shows equals the history.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

from jupyter_chatbridge.client import AsyncChatClient, ConnectionStatus, StatusChange
from jupyter_chatbridge.clock import FakeScheduler

from .server_process import ServerProcess
from .support import eventually

# (seconds between chunks, words in each answer, kills): 20 kills a run at token rate
RATES = [(0.01, 200, 12), (0.05, 60, 8)]
Events = list[dict[str, Any]]


def answer_events(events: Events, reply_to: int) -> Events:
    """The events of the answer to the user message at seq `reply_to`."""
    starts = [e for e in events if e["type"] == "message_start" and e.get("replyTo") == reply_to]
    if not starts:
        return []
    message_id = starts[0]["messageId"]
    return [e for e in events if e.get("messageId") == message_id]


def assert_interrupted(answer: Events) -> None:
    """A cut answer ends, and says it was interrupted by the restart."""
    assert answer[-1]["type"] == "message_end", answer[-3:]
    ended_by = [e for e in answer if e["type"] in {"error", "message_end"}]
    said = " ".join(str(e.get("message", "")) + str(e.get("reason", "")) for e in ended_by)
    assert "restart" in said or "interrupted" in said, ended_by


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("chunk_delay", "words", "kills"), RATES)
async def test_python_client_survives_sigkill_at_token_rate(
    server_factory: Callable[..., ServerProcess], chunk_delay: float, words: int, kills: int
) -> None:
    rng = random.Random(f"crash-{chunk_delay}")
    server = server_factory(f"--EchoAgent.chunk_delay={chunk_delay}")
    await server.start()
    clock = FakeScheduler()  # the client's backoff: advanced by hand, never slept through
    statuses: list[StatusChange] = []
    client = AsyncChatClient(server.url, server.token, scheduler=clock, on_status=statuses.append)
    seen: Events = []
    text = " ".join(f"w{i}" for i in range(words))
    try:
        session = await client.session("crash")
        session.add_listener(seen.append)
        for kill in range(kills):
            receipt = await session.send_and_wait(text)
            reply_to = receipt.seq
            assert reply_to is not None
            # A random point of the answer: after this many of its words were shown.
            point = rng.randint(1, words - 1)

            def shown_words(reply_to: int = reply_to) -> int:
                return sum(e["type"] == "block_delta" for e in answer_events(seen, reply_to))

            await eventually(lambda point=point: shown_words() >= point)
            server.kill()
            shown = list(seen)
            await eventually(lambda: client.stream.status is not ConnectionStatus.CONNECTED)

            await server.start()
            clock.advance(statuses[-1].retry_in or 0)
            await eventually(lambda: client.stream.status is ConnectionStatus.CONNECTED)
            history = await session.history()
            # Closed before the restarted server answers anyone: no reader sees it open.
            assert_interrupted(answer_events(history, reply_to))
            by_seq = {e["seq"]: e for e in history}
            changed = [e for e in shown if by_seq.get(e["seq"]) != e]
            assert not changed, (
                f"kill {kill}: {len(changed)} events shown before the kill changed meaning, "
                f"first {changed[0]} is now {by_seq.get(changed[0]['seq'])}"
            )
            # The cut answer ends in what the client shows, and says why.
            await eventually(
                lambda reply_to=reply_to: any(
                    e["type"] == "message_end" for e in answer_events(seen, reply_to)
                )
            )
            assert_interrupted(answer_events(seen, reply_to))
            # A new message round-trips, and the client shows exactly the history.
            assert await session.ask(f"after {kill}") == f"Echo: after {kill}"
            assert seen == await session.history()
            assert [e["seq"] for e in seen] == list(range(1, len(seen) + 1))
    finally:
        await client.close()
