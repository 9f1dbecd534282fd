"""The agent runner: one task per session answers its queued messages in seq order.

Each answer is `message_start`, a `block_delta` per chunk the agent yields,
an `error` if the agent raised, and `message_end` with its `reason`
(`complete`, `error` or `stopped`), published through the fan-out. The agent
is asked for its second chunk only once its first is shown (committed): that
is the text a user waits for. Runs start only when asked (`ensure`,
`start_waiting`), never as a side effect of reading state.

Each answer streams in a task of its own, so Stop cancels that answer only:
the agent's async generator is closed where it waits (an HTTP agent closes its
upstream request) and the run goes on with the next queued message.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from ..protocol import EventType
from .agents import Agent, Ending, Role, Turn, UserMessage
from .context import Conversation, conversation_before
from .fanout import Fanout
from .metrics import NO_METRICS, AnswerClock, BridgeMetrics
from .state import PendingInput, Session

AgentFactory = Callable[[str, dict[str, Any]], Agent]
"""Makes a session's agent from its id and settings."""


class StopOutcome:
    """What a Stop found: the wire values of the stop answer's `reason`."""

    STOPPED = "stopped"  # this answer was running and is now stopped
    NOT_RUNNING = "not_running"  # no answer was running (or that one has not started)
    ALREADY_ENDED = "already_ended"  # the named answer had ended before


class _RunningAnswer:
    """The answer a session's run is streaming, and whether Stop asked to end it."""

    def __init__(self, message_id: str) -> None:
        self.message_id = message_id
        self.task: asyncio.Task[str] | None = None
        self.parts: list[str] = []  # the text streamed so far
        self.stop_requested = False
        self.abandoned = False  # the session is deleted or the server stops: no message_end
        self.ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        """Resolves with the `message_end` reason once that event is published."""


class AgentRunner:
    """Starts, cancels and awaits the agent runs of every session."""

    metrics: BridgeMetrics = NO_METRICS

    def __init__(
        self,
        fanout: Fanout,
        agent_factory: AgentFactory,
        log: logging.Logger | logging.LoggerAdapter[Any],
        max_context_chars: int = 50000,
    ) -> None:
        self._fanout = fanout
        self._agent_factory = agent_factory
        self._log = log
        self._max_context_chars = max_context_chars
        self._answers: dict[str, _RunningAnswer] = {}
        """The answer each session is streaming, by session id."""
        self._conversations: dict[str, Conversation] = {}
        """Each session's context for its next answer, by session id."""
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

    def stop_answer(
        self, session: Session, message_id: str | None
    ) -> tuple[str, str | None, asyncio.Future[str] | None]:
        """Stop the running answer (the one named `message_id`, if given).

        Returns the outcome, the messageId it concerns, and for a stopped answer a
        future resolving with its `message_end` reason once that is published. A
        repeated Stop of an answer still ending gets the same future.
        """
        answer = self._answers.get(session.id)
        if answer is not None and message_id in (None, answer.message_id):
            if answer.task is not None and not answer.stop_requested:
                answer.stop_requested = True
                answer.task.cancel()
                self.metrics.record_stop()
            return StopOutcome.STOPPED, answer.message_id, answer.ended
        if message_id is not None and _answered(session, message_id, answer):
            return StopOutcome.ALREADY_ENDED, message_id, None
        return StopOutcome.NOT_RUNNING, message_id, None

    def cancel(self, session: Session) -> None:
        """Stop the session's run and close its agent (the session was deleted)."""
        self._abandon(session.id)
        self._conversations.pop(session.id, None)
        run = self.runs.pop(session.id, None)
        if run is not None:
            run.cancel()
        if session.agent is not None:
            self._spawn(session.agent.close())

    async def stop(self) -> None:
        """Cancel every run and wait until they have ended."""
        for session_id in list(self._answers):
            self._abandon(session_id)
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
        message_id = f"m{message.seq}"
        self._fanout.publish(
            session, EventType.MESSAGE_START, {"messageId": message_id, "replyTo": message.seq}
        )
        clock = self.metrics.answer_started()
        session.last_answered = max(session.last_answered, message.seq)
        conversation = self._conversation(session, message.seq)
        answer = self._answers[session.id] = _RunningAnswer(message_id)
        try:
            answer.task = asyncio.get_running_loop().create_task(
                self._stream(session, message, answer, conversation.turns, clock)
            )
            try:
                # Cancelling the run (session deleted, server stopping) cancels this too.
                reason = await answer.task
            except asyncio.CancelledError:
                if not answer.stop_requested or answer.abandoned:
                    raise
                reason = Ending.STOPPED
            self._fanout.publish(
                session, EventType.MESSAGE_END, {"messageId": message_id, "reason": reason}
            )
            clock.ended()
            answer.ended.set_result(reason)
            conversation.add(Turn(Role.USER, message.text))
            conversation.add(Turn(Role.ASSISTANT, "".join(answer.parts), reason))
        finally:
            if self._answers.get(session.id) is answer:
                del self._answers[session.id]
            if not answer.ended.done():
                answer.ended.cancel()

    def _conversation(self, session: Session, seq: int) -> Conversation:
        conversation = self._conversations.get(session.id)
        if conversation is None:
            # Once per session and process: what the log holds (after a restart, say).
            earlier = conversation_before(session.log.after(0), seq, self._max_context_chars)
            conversation = Conversation(self._max_context_chars, earlier)
            self._conversations[session.id] = conversation
        return conversation

    async def _stream(
        self,
        session: Session,
        message: PendingInput,
        answer: _RunningAnswer,
        history: tuple[Turn, ...],
        clock: AnswerClock,
    ) -> str:
        """Publish the agent's chunks; returns how the answer ended (not by Stop)."""
        message_id = answer.message_id
        try:
            if session.agent is None:
                session.agent = self._agent_factory(session.id, session.settings)
            user_message = UserMessage(
                session.id,
                message.seq,
                message.client_msg_id,
                message.text,
                message.connection_id,
                history,
            )
            chunks = session.agent.reply(user_message)
            try:
                async for chunk in chunks:
                    if chunk:
                        answer.parts.append(chunk)
                        self._fanout.publish(
                            session, EventType.BLOCK_DELTA, {"messageId": message_id, "text": chunk}
                        )
                        clock.output()
                        if len(answer.parts) == 1:
                            # The first text reaches the user before the rest is read: a
                            # burst of chunks would keep the loop (and the GIL the store's
                            # writer needs to commit it) busy meanwhile.
                            await self._fanout.wait_shown()
            finally:
                # Stopped or failed: close the generator now (its `finally` frees upstream).
                aclose = getattr(chunks, "aclose", None)
                if aclose is not None:
                    await aclose()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._log.exception("chatbridge: agent failed in session %s", session.id)
            clock.failed()
            self._fanout.publish(
                session,
                EventType.ERROR,
                {"message": f"agent failed: {exc}", "messageId": message_id},
            )
            return Ending.ERROR
        return Ending.COMPLETE

    def _abandon(self, session_id: str) -> None:
        answer = self._answers.get(session_id)
        if answer is not None:
            answer.abandoned = True

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


def _answered(session: Session, message_id: str, running: _RunningAnswer | None) -> bool:
    """True if `message_id` names an answer of this session that has ended."""
    if not (message_id.startswith("m") and message_id[1:].isascii() and message_id[1:].isdigit()):
        return False
    seq = int(message_id[1:])
    if running is not None and running.message_id == f"m{seq}":
        return False
    return 0 < seq <= session.last_answered and message_id == f"m{seq}"
