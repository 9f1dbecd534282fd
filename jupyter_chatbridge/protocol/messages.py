"""The items of a transcript: user messages, agent answers and notices, as plain data."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Final, Literal

Role = Literal["user", "agent", "notice"]
LOST_BY_SERVER: Final = "lost by the server"
ENDINGS: Final = frozenset({"complete", "stopped", "error", "interrupted"})
"""How an answer can end: `message_end`'s `reason` on the wire."""


class Delivery(str, Enum):
    """Where a message sent from this client stands."""

    PENDING = "pending"  # handed to the outbox, no answer from the server yet
    RETRYING = "retrying"  # a transient failure; the outbox will try again
    FAILED = "failed"  # finally not delivered
    DELIVERED = "delivered"  # the server has it (receipt or its user_message)


@dataclass
class Message:
    """One item of the transcript: a user message, an agent answer or a notice."""

    key: str
    role: Role
    text: str
    generation: int
    order: int
    seq: int | None = None
    # user messages
    client_msg_id: str | None = None
    delivery: Delivery | None = None  # None: not sent from this client
    attempt: int | None = None
    retry_in_ms: float | None = None
    status: int | None = None
    retry_offered: bool = False
    # agent answers
    message_id: str | None = None
    reply_to: int | None = None
    done: bool = False
    ended: str | None = None  # how it ended (an ENDINGS value); None while it streams
    # an answer's agent error, a send failure, or a notice's trouble
    error: str | None = None
    # What each part of an answer came with, so a rewind can cut it back (not shown).
    chunks: list[tuple[int, str]] = field(default_factory=list, repr=False)
    end_seq: int | None = field(default=None, repr=False)
    error_seq: int | None = field(default=None, repr=False)

    @property
    def retry_in(self) -> float | None:
        """Seconds until the outbox retries (for a status line)."""
        return None if self.retry_in_ms is None else self.retry_in_ms / 1000.0

    def sort_key(self) -> tuple[int, float, int]:
        """Session order; messages not yet numbered by the server go last, in send order."""
        return (self.generation, float("inf") if self.seq is None else self.seq, self.order)

    def to_dict(self) -> dict[str, Any]:
        base: dict[str, Any] = {
            "key": self.key,
            "role": self.role,
            "generation": self.generation,
            "seq": self.seq,
            "text": self.text,
        }
        if self.role == "user":
            base.update(
                clientMsgId=self.client_msg_id,
                delivery=None if self.delivery is None else self.delivery.value,
                attempt=self.attempt,
                status=self.status,
                retryInMs=self.retry_in_ms,
                retryOffered=self.retry_offered,
                error=self.error,
            )
        elif self.role == "agent":
            base.update(
                messageId=self.message_id,
                replyTo=self.reply_to,
                done=self.done,
                ended=self.ended,
                error=self.error,
            )
        else:
            base.update(error=self.error)
        return base
