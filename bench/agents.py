"""`BurstAgent`: the benchmark's agent, steered by the text of each user message.

The bench servers run with ``--ChatBridgeApp.agent_class=bench.agents.BurstAgent``.
One server then serves every scenario, because each message says what to do:

``burst N``
    yield N chunks as fast as possible. After each chunk the agent yields to
    the event loop once (``await asyncio.sleep(0)``), as a real model streaming
    tokens from the network does, so every chunk is a separate loop iteration
    (and a separate write per watcher), exactly like the baseline servers'
    producers.
``paced N RATE``
    yield N chunks at RATE chunks per second on an absolute schedule (no
    drift); each chunk's text is ``t=<time.monotonic_ns() at publish>``, which
    the reader (another process on the same machine, same monotonic clock)
    subtracts from its receive time.

Any other text falls back to ``burst <default_chunks>``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from traitlets import Int

from jupyter_chatbridge.server.agents import Agent, UserMessage

# Every burst chunk has the same size as the baselines' chunks (see bench/common.py).
CHUNK_TEXT = "chunk-xxxxxxxxxxxxxxxxxxxxxxxxxx"


def parse_command(text: str, default_chunks: int) -> tuple[str, int, float]:
    """(mode, count, rate) from a message text; rate 0 for bursts."""
    parts = text.split()
    try:
        if parts and parts[0] == "burst" and len(parts) == 2:
            return "burst", max(0, int(parts[1])), 0.0
        if parts and parts[0] == "paced" and len(parts) == 3:
            return "paced", max(0, int(parts[1])), max(0.001, float(parts[2]))
    except ValueError:
        pass
    return "burst", default_chunks, 0.0


class BurstAgent(Agent):
    """Answers with a burst of equal chunks, or paced chunks carrying a timestamp."""

    default_chunks = Int(10, help="Chunks for a message that is not a command.").tag(config=True)

    async def reply(self, message: UserMessage) -> AsyncIterator[str]:  # type: ignore[override]
        mode, count, rate = parse_command(message.text, self.default_chunks)
        if mode == "burst":
            for _ in range(count):
                yield CHUNK_TEXT
                await asyncio.sleep(0)
            return
        interval_ns = int(1e9 / rate)
        start = time.monotonic_ns()
        for i in range(count):
            delay = (start + i * interval_ns - time.monotonic_ns()) / 1e9
            if delay > 0:
                await asyncio.sleep(delay)
            yield f"t={time.monotonic_ns()}"
