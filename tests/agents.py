"""Agents for tests: one that waits at a gate the test opens, one that fails, a fast one,
and one whose answers have as many lines as asked."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import ClassVar

from jupyter_chatbridge.server.agents import Agent, EchoAgent, UserMessage


class GateAgent(Agent):
    """Answers "working", waits until the test opens `gate`, then answers "done"."""

    gate: ClassVar[asyncio.Event | None] = None
    runs: ClassVar[list[str]] = []

    async def reply(self, message: UserMessage) -> AsyncIterator[str]:  # type: ignore[override]
        GateAgent.runs.append(message.client_msg_id)
        yield "working "
        assert GateAgent.gate is not None
        await GateAgent.gate.wait()
        yield "done"


class FailingAgent(Agent):
    """Starts an answer, then fails like a model backend going away."""

    async def reply(self, message: UserMessage) -> AsyncIterator[str]:  # type: ignore[override]
        yield "partial "
        raise RuntimeError("model backend unavailable")


class BurstAgent(Agent):
    """Answers with `chunks` numbered deltas, paced like a fast model (about 2 ms per 10)."""

    chunks: ClassVar[int] = 5000

    async def reply(self, message: UserMessage) -> AsyncIterator[str]:  # type: ignore[override]
        for i in range(self.chunks):
            yield f"{i} "
            if i % 10 == 9:
                await asyncio.sleep(0.002)


class LinesAgent(EchoAgent):
    """Echoes the message like `EchoAgent`; a message that asks for "N lines" then gets
    N numbered lines in all, so a conversation's answers can be any height."""

    async def reply(self, message: UserMessage) -> AsyncIterator[str]:  # type: ignore[override]
        async for chunk in super().reply(message):
            yield chunk
        asked = re.search(r"(\d+) lines", message.text)
        for number in range(2, int(asked.group(1)) + 1 if asked else 0):
            if self.chunk_delay > 0:
                await asyncio.sleep(self.chunk_delay)
            yield f"\nline {number}: more of the answer"


class HistoryAgent(Agent):
    """Answers with what it was given of the conversation: "<n> turns: role:ended:text | …"."""

    async def reply(self, message: UserMessage) -> AsyncIterator[str]:  # type: ignore[override]
        turns = " | ".join(f"{t.role}:{t.ended}:{t.text}" for t in message.history)
        yield f"{len(message.history)} turns: {turns}"
