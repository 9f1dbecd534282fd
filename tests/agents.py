"""Agents for tests: one that waits at a gate the test opens, one that fails."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import ClassVar

from jupyter_chatbridge.server.agents import Agent, UserMessage


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
