"""The send outbox of the contract: ordered, one request in flight, idempotent retries.

The rules (which outcome is retried, which final failure may be retried by the
user) are the pure `protocol.outbox_machine.OutboxMachine`; this module does
its I/O. Transport-agnostic: the caller supplies `post` (one HTTP `send`, or a
WebSocket `send` waiting for its ack) and a `listener` for the `send_*` events a
UI shows. Time comes from an injected `Scheduler`, so retries are tested
without sleeping.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from jupyter_chatbridge.client.policy import (
    MAX_QUEUED_SENDS,
    MAX_REMEMBERED_FAILURES,
    MAX_SEND_RETRIES,
    RETRY_DELAY,
    failure_code,
)
from jupyter_chatbridge.clock import Scheduler, sleep
from jupyter_chatbridge.protocol import is_valid_client_msg_id, is_valid_session_id
from jupyter_chatbridge.protocol.outbox_machine import (
    MachineEvent,
    OutboxEvent,
    OutboxEventType,
    OutboxMachine,
    QueuedMessage,
    QueueFull,
)

log = logging.getLogger(__name__)

__all__ = [
    "MAX_REMEMBERED_FAILURES",
    "Outbox",
    "OutboxEvent",
    "OutboxEventType",
    "OutboxFull",
    "SendResponse",
]


@dataclass(frozen=True)
class SendResponse:
    """What `post` returns: the HTTP status, the JSON body and a parsed Retry-After."""

    status: int
    body: dict[str, Any] = field(default_factory=dict)
    retry_after: float | None = None


class OutboxFull(QueueFull):
    """Raised by `enqueue` when the outbox already holds its maximum of messages."""


class OutboxClosed(RuntimeError):
    """Raised when a message is offered to an outbox that was closed."""


PostFunction = Callable[[str, str, str], Awaitable[SendResponse]]
OutboxListener = Callable[[OutboxEvent], None]


def new_client_msg_id() -> str:
    """Make a fresh clientMsgId."""
    return "m-" + uuid.uuid4().hex


@dataclass(frozen=True)
class _Answer:
    """One post's result, reduced to what the rules look at (plus text for the UI)."""

    status: int | None
    error: str | None = None
    retry_after: float | None = None
    seq: int | None = None
    duplicate: bool | None = None


class Outbox:
    """Delivers messages in enqueue order, one `post` at a time, retrying transient failures.

    Each message keeps its clientMsgId across retries, so the server's dedup makes a
    retry after a lost answer harmless. A message waiting for its retry holds back
    every later one: ordering beats latency.
    """

    def __init__(
        self,
        post: PostFunction,
        scheduler: Scheduler,
        listener: OutboxListener,
        *,
        max_queued: int = MAX_QUEUED_SENDS,
        max_retries: int = MAX_SEND_RETRIES,
        retry_delay: float = RETRY_DELAY,
        new_id: Callable[[], str] = new_client_msg_id,
        max_failed: int = MAX_REMEMBERED_FAILURES,
    ) -> None:
        self._machine = OutboxMachine(
            max_queued=max_queued,
            max_retries=max_retries,
            retry_delay_ms=retry_delay * 1000.0,
            max_failed=max_failed,
        )
        self._post = post
        self._scheduler = scheduler
        self._listener = listener
        self.max_queued = max_queued
        self.max_retries = max_retries
        self.retry_delay = retry_delay
        self._new_id = new_id
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    # -- public API -------------------------------------------------------------------------

    @property
    def pending(self) -> list[str]:
        """The clientMsgIds still to deliver, in order; the one in flight (or waiting) first."""
        return self._machine.pending

    @property
    def failed(self) -> list[str]:
        """The clientMsgIds of recent retryable final failures `retry` can resend, oldest first."""
        return self._machine.failed_ids

    @property
    def closed(self) -> bool:
        """True once `close` was called."""
        return self._closed

    def __len__(self) -> int:
        return len(self._machine.queue)

    def enqueue(self, session_id: str, text: str, client_msg_id: str | None = None) -> str:
        """Queue `text` for `session_id`, emit `send_pending` and return its clientMsgId.

        Raises `OutboxFull` when `max_queued` messages are already waiting or in
        flight, `ValueError` for an invalid session id or clientMsgId, and
        `RuntimeError` without a running event loop.
        """
        if not is_valid_session_id(session_id):
            raise ValueError(f"invalid session id: {session_id!r}")
        if client_msg_id is None:
            client_msg_id = self._new_id()
        if not is_valid_client_msg_id(client_msg_id):
            raise ValueError(f"invalid clientMsgId: {client_msg_id!r}")
        machine = self._machine
        self._admit(lambda: machine.enqueue(session_id, client_msg_id, text))
        return client_msg_id

    def retry(self, client_msg_id: str) -> None:
        """Resend a retryable final failure, with the same clientMsgId and a fresh budget.

        Raises `KeyError` if the message is not among the remembered retryable
        failures (a refused message, e.g. 400 or 413, is never retried).
        """
        if client_msg_id not in self._machine.failed:
            raise KeyError(client_msg_id)
        self._admit(lambda: self._machine.retry(client_msg_id))

    async def drain(self) -> None:
        """Wait until every queued message is delivered or finally failed (or the outbox closed)."""
        while self._machine.queue and not self._closed:
            task = self._ensure_task()
            await asyncio.wait({task})
            if not task.cancelled() and task.exception() is not None:
                raise RuntimeError("the outbox drain task failed") from task.exception()

    def close(self) -> None:
        """Stop: cancel the retry timer and the drain task and drop what is queued. Idempotent."""
        self._closed = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._machine.clear()

    async def aclose(self) -> None:
        """`close`, then wait until the drain task has really finished."""
        self.close()
        task = self._task
        if task is not None and task is not asyncio.current_task():
            await asyncio.wait({task})

    async def __aenter__(self) -> Outbox:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- internals --------------------------------------------------------------------------

    def _admit(self, admit: Callable[[], list[MachineEvent]]) -> None:
        if self._closed:
            raise OutboxClosed("the outbox is closed")
        # Fails here, before anything is queued, when there is no running loop.
        asyncio.get_running_loop()
        try:
            events = admit()
        except QueueFull as exc:
            raise OutboxFull(str(exc)) from None
        for event in events:
            self._emit(event.to_outbox_event())
        self._ensure_task()

    def _ensure_task(self) -> asyncio.Task[None]:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="chatbridge-outbox"
            )
        return self._task

    def _emit(self, event: OutboxEvent) -> None:
        # A broken UI callback must not stop delivery of the messages behind it.
        try:
            self._listener(event)
        except Exception:
            log.exception("outbox listener failed on %s", event.type)

    async def _run(self) -> None:
        while not self._closed:
            message = self._machine.take_post()
            if message is None:
                return
            answer = await self._attempt(message)
            if self._closed:
                return
            retry_after = None if answer.retry_after is None else answer.retry_after * 1000.0
            events, wait_ms = self._machine.outcome(
                answer.status,
                seq=answer.seq,
                duplicate=answer.duplicate,
                retry_after_ms=retry_after,
            )
            for event in events:
                self._emit(event.to_outbox_event(answer.error))
            if wait_ms is not None:
                await self._wait(wait_ms / 1000.0)
                self._machine.timer()

    async def _attempt(self, message: QueuedMessage) -> _Answer:
        try:
            response = await self._post(message.session_id, message.client_msg_id, message.text)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # A code on the exception (e.g. an HTTPClientError's 404) still decides; bare
            # network errors and time-outs have none and so are transient.
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return _Answer(failure_code(exc), error)
        if 200 <= response.status <= 299:
            seq = response.body.get("seq")
            return _Answer(
                response.status,
                seq=seq if isinstance(seq, int) and not isinstance(seq, bool) else None,
                duplicate=bool(response.body.get("duplicate", False)),
            )
        return _Answer(response.status, _error_text(response), response.retry_after)

    async def _wait(self, delay: float) -> None:
        # Kept as a task-local wait so close() can cancel it with the drain task.
        await sleep(self._scheduler, delay)


def _error_text(response: SendResponse) -> str:
    message = response.body.get("error")
    code = response.body.get("code")
    if isinstance(message, str) and message:
        return f"{message} ({code})" if isinstance(code, str) and code else message
    return f"HTTP {response.status}"
