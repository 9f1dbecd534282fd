"""One agent run per session across processes: a lease in Redis, with a fencing token.

A process answers a session's messages only while it holds the session's lease
(`SET key token NX PX ms`, renewed every third of its time). Every append of the
run carries the token, and Redis refuses one whose token no longer holds the
lease (redis_scripts.APPEND_NEXT), so an owner that was paused or cut off past
its lease cannot write into the session after another process took it over.

Each process sweeps its sessions every `SWEEP_INTERVAL`: one with a message to
answer, or an answer left open, and no live owner, is taken over. The new owner
closes an answer its dead owner left open as interrupted (`recovery.recover`, the
same rule as a restart) and answers what is queued.

A run that has answered everything keeps the lease for `LINGER` seconds, waiting
for the session's next message: a conversation's next turn then starts at once,
without the round trips of letting go and taking the lease again (and no other
process could answer meanwhile anyway: it would find the lease taken).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from ..clock import Scheduler
from .fanout import Fanout
from .recovery import recover
from .relay import RedisRelay
from .runner import AgentFactory, AgentRunner
from .state import Session

# Seconds between two sweeps for sessions nobody answers.
SWEEP_INTERVAL = 1.0

# Seconds a run keeps the lease after answering everything, for the next message.
LINGER = 1.0


class LeasedRunner(AgentRunner):
    """An `AgentRunner` that runs a session only while it holds the session's lease."""

    def __init__(
        self,
        fanout: Fanout,
        agent_factory: AgentFactory,
        log: logging.Logger | logging.LoggerAdapter[Any],
        relay: RedisRelay,
        lease_seconds: float,
        scheduler: Scheduler,
        max_context_chars: int = 50000,
    ) -> None:
        super().__init__(fanout, agent_factory, log, max_context_chars)
        self._relay = relay
        self._scheduler = scheduler
        self._lease_ms = max(100, int(lease_seconds * 1000))
        self._sweeper: asyncio.Task[None] | None = None
        self._lingering: dict[str, Callable[[], None]] = {}
        """Wakes a run that answered everything and waits for more, by session."""
        relay.on_input = self.ensure

    def start_waiting(self, sessions: Any) -> None:
        """Sweep for sessions to answer from now on (restored ones included)."""
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        await super().stop()

    def ensure(self, session: Session) -> None:
        """Try to take the session's lease and answer it (nothing if another has it)."""
        if session.id not in self.runs:
            self.runs[session.id] = asyncio.get_running_loop().create_task(self._drive(session))
        elif session.id in self._lingering:
            self._lingering[session.id]()  # its run holds the lease: it answers this

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            for session in self._relay.needs_owner():
                self.ensure(session)

    async def _drive(self, session: Session) -> None:
        store = self._relay.store
        token = f"{self._relay.token}:{id(asyncio.current_task()):x}"
        owned = False
        try:
            try:
                taken = await store.take_lease(session.id, token, self._lease_ms)
            except Exception:
                return  # Redis is away: the next sweep tries again
            if taken is None:
                return
            owned = True
            store.fence[session.id] = token
            store.fenced.discard(session.id)
            renew = asyncio.get_running_loop().create_task(
                self._renew(session, token, asyncio.current_task())
            )
            try:
                await self._answer_all(session, taken)
            finally:
                renew.cancel()
                session.running = False
                store.fence.pop(session.id, None)
                store.written.pop(session.id, None)
                with contextlib.suppress(Exception):
                    await store.release_lease(session.id, token)
        finally:
            if self.runs.get(session.id) is asyncio.current_task():
                del self.runs[session.id]
            # A message read while this run was letting go found it still running:
            # try again now rather than at the next sweep.
            if owned and session.pending and self._relay.holds(session):
                self.ensure(session)

    async def _answer_all(self, session: Session, newest: int) -> None:
        """Answer what is queued, and what comes within `LINGER` of the last answer;
        `newest` is the session's seq in Redis as the lease was taken."""
        relay = self._relay
        # Everything Redis held when the lease was taken first: a stale view would
        # answer a message twice. From then on only this run writes answers, so each
        # round needs only its own previous writes shown.
        await relay.shown(session, newest)
        while session.id not in relay.store.fenced and relay.holds(session):
            recovery = recover(session.log.retained)
            if recovery.cut_answer is not None:
                self._log.warning(
                    "chatbridge: session %s: closing answer %s, its process stopped",
                    session.id,
                    recovery.cut_answer,
                )
                for event_type, fields in recovery.append:
                    self._fanout.publish(session, event_type, fields)
            elif recovery.requeue:
                session.running = True
                await self._answer(session, recovery.requeue[0])
                session.running = False
            elif await self._next_message(session):
                continue  # nothing of this run's to wait for
            else:
                return
            await relay.own_writes_shown(session)

    async def _next_message(self, session: Session) -> bool:
        """Wait up to `LINGER` for a message to answer; False if none came."""
        outcome: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

        def settle(came: bool) -> None:
            if not outcome.done():
                outcome.set_result(came)

        self._lingering[session.id] = lambda: settle(True)
        timer = self._scheduler.call_later(LINGER, lambda: settle(False))
        try:
            return await outcome
        finally:
            timer.cancel()
            del self._lingering[session.id]

    async def _renew(self, session: Session, token: str, run: asyncio.Task[Any] | None) -> None:
        store = self._relay.store
        while True:
            await asyncio.sleep(self._lease_ms / 3000)
            try:
                held = await store.renew_lease(session.id, token, self._lease_ms)
            except Exception:
                continue  # Redis is away: the fence stops us if another took over meanwhile
            if not held:
                self._log.warning(
                    "chatbridge: session %s: lease lost; stopping its run", session.id
                )
                store.fenced.add(session.id)
                if run is not None:
                    run.cancel()
                return
