"""The send outbox of the contract: ordered, one request in flight, idempotent retries.

Transport-agnostic: the caller supplies `post` (one HTTP `send`, or a WebSocket
`send` waiting for its ack) and a `listener` for the `send_*` events a UI shows.
Time comes from an injected `Scheduler`, so retries are tested without sleeping.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Literal

from jupyter_chatbridge.client.policy import (
    MAX_QUEUED_SENDS,
    MAX_SEND_RETRIES,
    RETRY_DELAY,
    Verdict,
    classify,
    failure_code,
)
from jupyter_chatbridge.clock import Scheduler, sleep
from jupyter_chatbridge.protocol import is_valid_client_msg_id, is_valid_session_id

log = logging.getLogger(__name__)

# Enough for a Retry button on every message a user could plausibly still see.
MAX_REMEMBERED_FAILURES: Final = 100

OutboxEventType = Literal["send_pending", "send_failed", "send_accepted"]


@dataclass(frozen=True)
class SendResponse:
    """What `post` returns: the HTTP status, the JSON body and a parsed Retry-After."""

    status: int
    body: dict[str, Any] = field(default_factory=dict)
    retry_after: float | None = None


@dataclass(frozen=True)
class OutboxEvent:
    """A change in a message's delivery state, for the UI."""

    type: OutboxEventType
    session_id: str
    client_msg_id: str
    text: str
    seq: int | None = None
    duplicate: bool | None = None
    will_retry: bool | None = None
    attempt: int | None = None
    status: int | None = None
    error: str | None = None
    retry_in: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The event with the wire's camelCase keys, leaving out fields that are None."""
        items = {
            "type": self.type,
            "sessionId": self.session_id,
            "clientMsgId": self.client_msg_id,
            "text": self.text,
            "seq": self.seq,
            "duplicate": self.duplicate,
            "willRetry": self.will_retry,
            "attempt": self.attempt,
            "status": self.status,
            "error": self.error,
            "retryIn": self.retry_in,
        }
        return {key: value for key, value in items.items() if value is not None}


class OutboxFull(RuntimeError):
    """Raised by `enqueue` when the outbox already holds its maximum of messages."""


class OutboxClosed(RuntimeError):
    """Raised when a message is offered to an outbox that was closed."""


PostFunction = Callable[[str, str, str], Awaitable[SendResponse]]
OutboxListener = Callable[[OutboxEvent], None]


def new_client_msg_id() -> str:
    """Make a fresh clientMsgId."""
    return "m-" + uuid.uuid4().hex


@dataclass
class _Message:
    session_id: str
    client_msg_id: str
    text: str
    posts: int = 0


@dataclass(frozen=True)
class _Outcome:
    accepted: bool
    retryable: bool
    status: int | None
    error: str | None
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
        if max_queued < 1 or max_retries < 0 or retry_delay < 0 or max_failed < 0:
            raise ValueError("outbox limits must be non-negative (max_queued at least 1)")
        self._post = post
        self._scheduler = scheduler
        self._listener = listener
        self.max_queued = max_queued
        self.max_retries = max_retries
        self.retry_delay = retry_delay
        self._new_id = new_id
        self._max_failed = max_failed
        self._queue: deque[_Message] = deque()
        self._failed: OrderedDict[str, _Message] = OrderedDict()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    # -- public API -------------------------------------------------------------------------

    @property
    def pending(self) -> list[str]:
        """The clientMsgIds still to deliver, in order; the one in flight (or waiting) first."""
        return [message.client_msg_id for message in self._queue]

    @property
    def failed(self) -> list[str]:
        """The clientMsgIds of recent final failures that `retry` can resend, oldest first."""
        return list(self._failed)

    @property
    def closed(self) -> bool:
        """True once `close` was called."""
        return self._closed

    def __len__(self) -> int:
        return len(self._queue)

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
        self._admit(_Message(session_id, client_msg_id, text))
        return client_msg_id

    def retry(self, client_msg_id: str) -> None:
        """Resend a message that finally failed, with the same clientMsgId and a fresh budget.

        Raises `KeyError` if the message is not among the remembered failures.
        """
        old = self._failed.pop(client_msg_id)
        try:
            self._admit(_Message(old.session_id, old.client_msg_id, old.text))
        except BaseException:
            # A full or closed outbox must leave the Retry button working.
            self._failed[client_msg_id] = old
            raise

    async def drain(self) -> None:
        """Wait until every queued message is delivered or finally failed (or the outbox closed)."""
        while self._queue and not self._closed:
            task = self._ensure_task()
            await asyncio.wait({task})
            if not task.cancelled() and task.exception() is not None:
                raise RuntimeError("the outbox drain task failed") from task.exception()

    def close(self) -> None:
        """Stop: cancel the retry timer and the drain task and drop what is queued. Idempotent."""
        self._closed = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._queue.clear()

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

    def _admit(self, message: _Message) -> None:
        if self._closed:
            raise OutboxClosed("the outbox is closed")
        if len(self._queue) >= self.max_queued:
            raise OutboxFull(
                f"send outbox is full: {self.max_queued} messages are already waiting to be "
                "delivered; wait for them before sending more"
            )
        # Fails here, before anything is queued, when there is no running loop.
        asyncio.get_running_loop()
        self._queue.append(message)
        self._emit(
            OutboxEvent("send_pending", message.session_id, message.client_msg_id, message.text)
        )
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
        while self._queue and not self._closed:
            message = self._queue[0]
            message.posts += 1
            outcome = await self._attempt(message)
            if self._closed:
                return
            if outcome.accepted:
                self._queue.popleft()
                self._emit(
                    OutboxEvent(
                        "send_accepted",
                        message.session_id,
                        message.client_msg_id,
                        message.text,
                        seq=outcome.seq,
                        duplicate=outcome.duplicate,
                        attempt=message.posts,
                        status=outcome.status,
                    )
                )
                continue
            will_retry = outcome.retryable and message.posts <= self.max_retries
            if not will_retry:
                self._queue.popleft()
                self._remember_failure(message)
                self._emit(self._failure_event(message, outcome, will_retry=False))
                continue
            delay = self.retry_delay
            if outcome.retry_after is not None:
                delay = max(0.0, outcome.retry_after)
            self._emit(self._failure_event(message, outcome, will_retry=True, retry_in=delay))
            await self._wait(delay)

    async def _attempt(self, message: _Message) -> _Outcome:
        try:
            response = await self._post(message.session_id, message.client_msg_id, message.text)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # A code on the exception (e.g. an HTTPClientError's 404) still decides; bare
            # network errors and time-outs have none and so are transient.
            return _Outcome(
                accepted=False,
                retryable=classify(exc) is Verdict.TRANSIENT,
                status=failure_code(exc),
                error=f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
            )
        if 200 <= response.status <= 299:
            seq = response.body.get("seq")
            return _Outcome(
                accepted=True,
                retryable=False,
                status=response.status,
                error=None,
                seq=seq if isinstance(seq, int) and not isinstance(seq, bool) else None,
                duplicate=bool(response.body.get("duplicate", False)),
            )
        return _Outcome(
            accepted=False,
            retryable=classify(response.status) is Verdict.TRANSIENT,
            status=response.status,
            error=_error_text(response),
            retry_after=response.retry_after,
        )

    def _failure_event(
        self,
        message: _Message,
        outcome: _Outcome,
        *,
        will_retry: bool,
        retry_in: float | None = None,
    ) -> OutboxEvent:
        return OutboxEvent(
            "send_failed",
            message.session_id,
            message.client_msg_id,
            message.text,
            will_retry=will_retry,
            attempt=message.posts,
            status=outcome.status,
            error=outcome.error,
            retry_in=retry_in,
        )

    def _remember_failure(self, message: _Message) -> None:
        if self._max_failed == 0:
            return
        self._failed.pop(message.client_msg_id, None)
        self._failed[message.client_msg_id] = message
        while len(self._failed) > self._max_failed:
            self._failed.popitem(last=False)

    async def _wait(self, delay: float) -> None:
        # Kept as a task-local wait so close() can cancel it with the drain task.
        await sleep(self._scheduler, delay)


def _error_text(response: SendResponse) -> str:
    message = response.body.get("error")
    code = response.body.get("code")
    if isinstance(message, str) and message:
        return f"{message} ({code})" if isinstance(code, str) and code else message
    return f"HTTP {response.status}"
