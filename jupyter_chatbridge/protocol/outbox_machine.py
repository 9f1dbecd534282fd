"""The send outbox as a pure state machine: outcomes in, `send_*` events and commands out.

Ordered, one request in flight, each message keeping its clientMsgId across
retries. Which outcome leads to which event and state is the `outbox.transitions`
table of `client_rules.json`; this class only applies it. The I/O (posting,
waiting) belongs to the caller: after every call it asks `take_post()` whether
to start a request, and honours `wait_ms` by calling `timer()` when it is over.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Final, Literal

from .rules import (
    MAX_QUEUED_SENDS,
    MAX_REMEMBERED_FAILURES,
    MAX_SEND_RETRIES,
    RETRY_DELAY_MS,
    RULES,
    classify_code,
)

Outcome = Literal["accepted", "transient", "permanent", "refused"]
EventName = Literal["send_pending", "send_failed", "send_accepted"]
OutboxEventType = EventName


@dataclass(frozen=True)
class Transition:
    """One row of the transitions table."""

    outcome: Outcome
    retries_left: bool | None  # None: does not matter
    event: EventName
    will_retry: bool | None
    retryable: bool | None
    state: str


TRANSITIONS: Final = tuple(
    Transition(
        row["outcome"],
        row["retriesLeft"],
        row["event"],
        row["willRetry"],
        row["retryable"],
        row["state"],
    )
    for row in RULES["outbox"]["transitions"]
)


# Statuses that refuse the message itself (malformed, too large): a Retry cannot help.
REFUSED_STATUSES: Final = frozenset(int(c) for c in RULES["outbox"]["refusedHttp"])


def outcome_of(status: int | None) -> Outcome:
    """Which kind of outcome an answer is: 2xx accepted, refused, else as `classify` says."""
    if status is not None and 200 <= status <= 299:
        return "accepted"
    if status in REFUSED_STATUSES:
        return "refused"
    return classify_code(status)


def transition(outcome: Outcome, retries_left: bool) -> Transition:
    """The table's row for an outcome."""
    for row in TRANSITIONS:
        if row.outcome == outcome and row.retries_left in (None, retries_left):
            return row
    raise LookupError(f"no outbox transition for {outcome} (retries left: {retries_left})")


class QueueFull(RuntimeError):
    """The outbox already holds its maximum of messages."""


@dataclass
class QueuedMessage:
    """A message the outbox still has to deliver (or remembers as finally failed)."""

    session_id: str
    client_msg_id: str
    text: str
    posts: int = 0


@dataclass(frozen=True)
class MachineEvent:
    """A delivery-state change; `to_dict` is the form the conformance vectors compare."""

    type: EventName
    message: QueuedMessage
    attempt: int | None = None
    status: int | None = None
    will_retry: bool | None = None
    retryable: bool | None = None
    retry_in_ms: float | None = None
    seq: int | None = None
    duplicate: bool | None = None

    def to_outbox_event(self, error: str | None = None) -> OutboxEvent:
        """The event as the client shows it: with session, text, error text, seconds."""
        message = self.message
        return OutboxEvent(
            self.type,
            message.session_id,
            message.client_msg_id,
            message.text,
            seq=self.seq,
            duplicate=self.duplicate,
            will_retry=self.will_retry,
            retryable=self.retryable,
            attempt=self.attempt,
            status=self.status,
            error=error if self.type == "send_failed" else None,
            retry_in=None if self.retry_in_ms is None else self.retry_in_ms / 1000.0,
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "clientMsgId": self.message.client_msg_id}
        if self.type == "send_accepted":
            out.update(
                attempt=self.attempt, status=self.status, seq=self.seq, duplicate=self.duplicate
            )
        elif self.type == "send_failed":
            out.update(
                attempt=self.attempt,
                status=self.status,
                willRetry=self.will_retry,
                retryable=self.retryable,
                retryInMs=self.retry_in_ms,
            )
        return out


@dataclass(frozen=True)
class OutboxEvent:
    """A change in a message's delivery state, for the UI."""

    type: EventName
    session_id: str
    client_msg_id: str
    text: str
    seq: int | None = None
    duplicate: bool | None = None
    will_retry: bool | None = None
    # On a final failure: whether the user may retry it (the rules' one eligibility rule).
    retryable: bool | None = None
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
            "retryable": self.retryable,
            "attempt": self.attempt,
            "status": self.status,
            "error": self.error,
            "retryIn": self.retry_in,
        }
        return {key: value for key, value in items.items() if value is not None}

    def transcript_input(self) -> dict[str, Any]:
        """The event as an input of the transcript reducer (times in milliseconds)."""
        event = self.to_dict()
        if self.retry_in is not None:
            event["retryInMs"] = event.pop("retryIn") * 1000.0
        return {"kind": "outbox", "event": event}


class OutboxMachine:
    """The outbox's state: a queue whose head is idle, in flight or waiting for its retry."""

    def __init__(
        self,
        *,
        max_queued: int = MAX_QUEUED_SENDS,
        max_retries: int = MAX_SEND_RETRIES,
        retry_delay_ms: float = RETRY_DELAY_MS,
        max_failed: int = MAX_REMEMBERED_FAILURES,
    ) -> None:
        if max_queued < 1 or max_retries < 0 or retry_delay_ms < 0 or max_failed < 0:
            raise ValueError("outbox limits must be non-negative (max_queued at least 1)")
        self.max_queued = max_queued
        self.max_retries = max_retries
        self.retry_delay_ms = retry_delay_ms
        self.max_failed = max_failed
        self.queue: deque[QueuedMessage] = deque()
        self.failed: OrderedDict[str, QueuedMessage] = OrderedDict()
        self.head: Literal["idle", "in_flight", "waiting"] = "idle"

    # -- inputs -------------------------------------------------------------------------

    def enqueue(self, session_id: str, client_msg_id: str, text: str) -> list[MachineEvent]:
        """Admit a new message (raises `QueueFull`)."""
        return self._admit(QueuedMessage(session_id, client_msg_id, text))

    def retry(self, client_msg_id: str) -> list[MachineEvent]:
        """The user's Retry of a retryable final failure: same id, fresh budget.

        Raises `KeyError` for a message that is not a remembered retryable failure,
        `QueueFull` when full (the failure stays retryable).
        """
        old = self.failed[client_msg_id]
        events = self._admit(QueuedMessage(old.session_id, old.client_msg_id, old.text))
        del self.failed[client_msg_id]
        return events

    def take_post(self) -> QueuedMessage | None:
        """The message to post now, if a request should start; counts the attempt."""
        if self.head != "idle" or not self.queue:
            return None
        self.head = "in_flight"
        message = self.queue[0]
        message.posts += 1
        return message

    def outcome(
        self,
        status: int | None,
        *,
        seq: int | None = None,
        duplicate: bool | None = None,
        retry_after_ms: float | None = None,
    ) -> tuple[list[MachineEvent], float | None]:
        """The in-flight request's answer (status None: no answer). Returns events, wait_ms."""
        if self.head != "in_flight":
            raise RuntimeError("no request in flight")
        message = self.queue[0]
        row = transition(outcome_of(status), message.posts <= self.max_retries)
        attempt = message.posts
        if row.event == "send_accepted":
            self._pop()
            return [
                MachineEvent(
                    "send_accepted",
                    message,
                    seq=seq,
                    duplicate=duplicate,
                    attempt=attempt,
                    status=status,
                )
            ], None
        if row.will_retry:
            self.head = "waiting"
            delay = self.retry_delay_ms if retry_after_ms is None else max(0.0, retry_after_ms)
            event = MachineEvent(
                "send_failed",
                message,
                will_retry=True,
                retry_in_ms=delay,
                attempt=attempt,
                status=status,
            )
            return [event], delay
        self._pop()
        if row.retryable:
            self._remember(message)
        event = MachineEvent(
            "send_failed",
            message,
            will_retry=False,
            retryable=bool(row.retryable),
            attempt=attempt,
            status=status,
        )
        return [event], None

    def timer(self) -> None:
        """The retry wait is over: the head may be posted again."""
        if self.head == "waiting":
            self.head = "idle"

    def clear(self) -> None:
        """Drop everything queued (the outbox was closed)."""
        self.queue.clear()
        self.head = "idle"

    # -- outputs ------------------------------------------------------------------------

    @property
    def pending(self) -> list[str]:
        return [message.client_msg_id for message in self.queue]

    @property
    def failed_ids(self) -> list[str]:
        return list(self.failed)

    # -- internals ----------------------------------------------------------------------

    def _admit(self, message: QueuedMessage) -> list[MachineEvent]:
        if len(self.queue) >= self.max_queued:
            raise QueueFull(
                f"send outbox is full: {self.max_queued} messages are already waiting to be "
                "delivered; wait for them before sending more"
            )
        self.queue.append(message)
        return [MachineEvent("send_pending", message)]

    def _pop(self) -> None:
        self.queue.popleft()
        self.head = "idle"

    def _remember(self, message: QueuedMessage) -> None:
        if self.max_failed == 0:
            return
        self.failed.pop(message.client_msg_id, None)
        self.failed[message.client_msg_id] = message
        while len(self.failed) > self.max_failed:
            self.failed.popitem(last=False)
