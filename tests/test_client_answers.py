"""`ask()` reads its answer through the transcript reducer, and fills a gap from history.

The session handle is driven directly (its client is a stand-in that records the
send and serves history), so the events can arrive with a hole in them, which
a live server does not produce on demand.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import pytest

from jupyter_chatbridge.client.api import AgentError, AsyncSession
from jupyter_chatbridge.client.outbox import OutboxEvent


class StandIn:
    """The parts of AsyncChatClient an AsyncSession uses for `ask`."""

    def __init__(self) -> None:
        self.session: AsyncSession | None = None
        self.history_calls: list[tuple[int, int | None]] = []
        self.stored: list[dict[str, Any]] = []

    async def send_and_wait(self, session_id: str, text: str, client_msg_id: str) -> OutboxEvent:
        assert self.session is not None
        pending = OutboxEvent("send_pending", session_id, client_msg_id, text)
        self.session._outbox_event(pending)
        accepted = OutboxEvent("send_accepted", session_id, client_msg_id, text, seq=1)
        self.session._outbox_event(accepted)
        return accepted

    async def history(self, session_id: str, after: int, limit: int | None) -> list[dict]:
        self.history_calls.append((after, limit))
        return [e for e in self.stored if e["seq"] > after][: limit or None]


def event(seq: int, kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "sessionId": "s1", "seq": seq, **fields}


async def _asking(stand_in: StandIn) -> tuple[AsyncSession, asyncio.Task[str]]:
    session = AsyncSession(stand_in, "s1")  # type: ignore[arg-type]
    stand_in.session = session
    task = asyncio.ensure_future(session.ask("hi"))
    for _ in range(3):
        await asyncio.sleep(0)
    return session, task


async def test_ask_fills_a_gap_from_history_and_returns_the_whole_answer() -> None:
    stand_in = StandIn()
    session, task = await _asking(stand_in)
    stand_in.stored = [
        event(1, "user_message", clientMsgId="x", text="hi"),
        event(2, "message_start", messageId="a", replyTo=1),
        event(3, "block_delta", messageId="a", text="Echo: "),
        event(4, "block_delta", messageId="a", text="hi"),
        event(5, "message_end", messageId="a"),
    ]
    session._receive(stand_in.stored[1])
    session._receive(stand_in.stored[4])  # 3 and 4 never came: a gap
    assert await asyncio.wait_for(task, 5) == "Echo: hi"
    assert stand_in.history_calls == [(2, 2)]


async def test_ask_raises_the_agent_error_of_its_answer() -> None:
    stand_in = StandIn()
    session, task = await _asking(stand_in)
    session._receive(event(2, "message_start", messageId="a", replyTo=1))
    session._receive(event(3, "error", messageId="a", message="model down"))
    with pytest.raises(AgentError, match="model down"):
        await asyncio.wait_for(task, 5)


def test_the_view_imports_nothing_that_imports_tornado() -> None:
    code = (
        "import sys, jupyter_chatbridge.ui.chatview, jupyter_chatbridge.protocol.transcript\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tornado', 'jupyter_server'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
