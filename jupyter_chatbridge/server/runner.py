"""The agent runner: one task per session answers its queued messages in seq order.

Each answer is `message_start`, a `block_delta` per chunk the agent yields,
an `error` if the agent raised, and `message_end`, published through the
fan-out. Runs start only when asked (`ensure`, `start_waiting`), never as a
side effect of reading state.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from ..protocol import EventType
from .agents import Agent, UserMessage
from .fanout import Fanout
from .metrics import NO_METRICS, BridgeMetrics
from .state import PendingInput, Session

AgentFactory = Callable[[str, dict[str, Any]], Agent]
"""Makes a session's agent from its id and settings."""


class AgentRunner:
    """Starts, cancels and awaits the agent runs of every session."""

    metrics: BridgeMetrics = NO_METRICS

    def __init__(
        self,
        fanout: Fanout,
        agent_factory: AgentFactory,
        log: logging.Logger | logging.LoggerAdapter[Any],
    ) -> None:
        self._fanout = fanout
        self._agent_factory = agent_factory
        self._log = log
        self.runs: dict[str, asyncio.Task[None]] = {}
        """The running task of each session that has one, by session id."""
        self._background: set[asyncio.Task[Any]] = set()

    def ensure(self, session: Session) -> None:
        """Start the session's run if it has none (it drains `session.pending`)."""
        if session.id not in self.runs:
            self.runs[session.id] = asyncio.get_running_loop().create_task(self._run(session))

    def start_waiting(self, sessions: Iterable[Session]) -> None:
        """Start the runs of sessions with queued messages (restored after a restart)."""
        for session in sessions:
            if session.pending and session.id not in self.runs:
                self._log.info(
                    "chatbridge: session %s: answering %d messages accepted before the restart",
                    session.id,
                    len(session.pending),
                )
                self.ensure(session)

    def cancel(self, session: Session) -> None:
        """Stop the session's run and close its agent (the session was deleted)."""
        run = self.runs.pop(session.id, None)
        if run is not None:
            run.cancel()
        if session.agent is not None:
            self._spawn(session.agent.close())

    async def stop(self) -> None:
        """Cancel every run and wait until they have ended."""
        runs = list(self.runs.values())
        self.runs.clear()
        for task in runs:
            task.cancel()
        await asyncio.gather(*runs, return_exceptions=True)

    @staticmethod
    async def close_agents(sessions: Iterable[Session]) -> None:
        """Close the agent of every session that has one (the server stops)."""
        agents = [s.agent for s in sessions if s.agent is not None]
        await asyncio.gather(*(a.close() for a in agents), return_exceptions=True)

    async def _run(self, session: Session) -> None:
        """Answer the session's queued messages one at a time, in seq order."""
        try:
            while session.pending:
                message = session.pending.popleft()
                session.running = True
                await self._answer(session, message)
        finally:
            session.running = False
            # No await since the loop's last check of `pending`, so a send cannot
            # have queued input that this run would strand.
            if self.runs.get(session.id) is asyncio.current_task():
                del self.runs[session.id]

    async def _answer(self, session: Session, message: PendingInput) -> None:
        publish = self._fanout.publish
        message_id = f"m{message.seq}"
        publish(session, EventType.MESSAGE_START, {"messageId": message_id, "replyTo": message.seq})
        clock = self.metrics.answer_started()
        try:
            if session.agent is None:
                session.agent = self._agent_factory(session.id, session.settings)
            user_message = UserMessage(
                session.id, message.seq, message.client_msg_id, message.text, message.connection_id
            )
            async for chunk in session.agent.reply(user_message):
                if chunk:
                    publish(
                        session, EventType.BLOCK_DELTA, {"messageId": message_id, "text": chunk}
                    )
                    clock.output()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._log.exception("chatbridge: agent failed in session %s", session.id)
            clock.failed()
            publish(
                session,
                EventType.ERROR,
                {"message": f"agent failed: {exc}", "messageId": message_id},
            )
        publish(session, EventType.MESSAGE_END, {"messageId": message_id})
        clock.ended()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            coro.close()
            return
        # The loop keeps only a weak reference to tasks: hold one until it is done.
        task = loop.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
