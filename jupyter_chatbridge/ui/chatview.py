"""What a chat panel shows, as plain state with no I/O and no widgets.

`ChatView` is fed what a client observes (session events, the outbox's
`send_*` events, stream status changes, a lost session) through plain method
calls, and answers what to show: the message list with each sent message's
delivery state, "thinking…", the connection status line and a banner. The
notebook `ChatWidget` renders it with ipywidgets; tests drive it directly.

The rules it keeps (PROTOCOL.md, "Client rules"; and the bugs named in the
review threads the design came from):

- A message's delivery warning changes only on evidence about that message:
  its own `send_*` events or its `user_message` in the session. Nothing
  unrelated or global (another message, a reconnect, an answer) touches it.
- "thinking…" shows at once on send and can never get stuck: it is derived,
  never stored, from messages still in flight or still unanswered, and is off
  when the message finally failed, the stream gave up, or the session is gone.
- A banner is cleared only by the resolution of its own cause (the session is
  started again; the connection is back).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Final, Literal

from ..client.outbox import OutboxEvent
from ..client.stream import ConnectionStatus, StatusChange
from ..protocol import EventType

# Statuses after which no event can arrive until the user acts (Reconnect).
_DEAD_STATUSES: Final = frozenset(
    {ConnectionStatus.OFFLINE, ConnectionStatus.FAILED, ConnectionStatus.CLOSED}
)
# Why this panel no longer drives its session (`detached` frame), in words. Take over undoes
# any reason but `session_ended`, which the session-gone banner says instead.
_DETACHED_WORDS: Final = {
    "taken_over": "another client now drives this session",
    "expired": "this panel was away too long and no longer drives this session",
}
_NOT_DRIVING: Final = "this panel no longer drives this session"
# Final send failures that a Retry cannot fix: the message itself is refused.
_NOT_RETRYABLE_STATUSES: Final = frozenset({400, 413})


class Delivery(str, Enum):
    """Where a message sent from this view stands."""

    PENDING = "pending"  # handed to the outbox, no answer from the server yet
    RETRYING = "retrying"  # a transient failure; the outbox will try again
    FAILED = "failed"  # finally not delivered
    DELIVERED = "delivered"  # the server has it (receipt or its user_message)


Role = Literal["user", "agent", "notice"]


@dataclass
class Entry:
    """One item of the message list: a user message, an agent answer or a notice."""

    key: str
    role: Role
    text: str
    generation: int
    order: int
    seq: int | None = None
    # user messages
    client_msg_id: str | None = None
    delivery: Delivery | None = None  # None: not sent from this view (history, other clients)
    attempt: int | None = None
    retry_in: float | None = None
    status: int | None = None
    retry_offered: bool = False
    # agent answers
    message_id: str | None = None
    reply_to: int | None = None
    done: bool = False
    # an answer's agent error, a send failure, or a notice's kind of trouble
    error: str | None = None

    def sort_key(self) -> tuple[int, float, int]:
        """Session order; messages not yet numbered by the server go last, in send order."""
        return (self.generation, float("inf") if self.seq is None else self.seq, self.order)


BannerKind = Literal["session_unknown", "connection_refused", "setup_failed"]
# Which banner shows when several causes hold at once.
_BANNER_PRIORITY: Final[tuple[BannerKind, ...]] = (
    "session_unknown",
    "connection_refused",
    "setup_failed",
)


@dataclass(frozen=True)
class Banner:
    """A problem with the whole panel, and the action that resolves it."""

    kind: BannerKind
    text: str
    action: str


@dataclass
class Changes:
    """What changed since the last `ChatView.take_changes`, so a renderer redraws only that."""

    entries: set[str] = field(default_factory=set)
    order: bool = False
    chrome: bool = False  # status line, banner, thinking, input hint

    def __bool__(self) -> bool:
        return bool(self.entries) or self.order or self.chrome


class ChatView:
    """The state of a chat panel on one session; every method is a plain, synchronous call.

    Not thread-safe: call it from one thread (the widget calls it only from its
    client's event loop).
    """

    def __init__(self, session_id: str, *, max_attempts: int = 6) -> None:
        self.session_id = session_id
        self.status = ConnectionStatus.IDLE
        self.status_change = StatusChange(ConnectionStatus.IDLE)
        self.max_attempts = max_attempts
        self.detached_reason: str | None = None
        self.input_error: str | None = None
        self.generation = 0
        self._entries: dict[str, Entry] = {}
        self._own: dict[str, Entry] = {}  # clientMsgId -> entry, for messages sent from here
        self._banners: dict[BannerKind, Banner] = {}
        self._order = itertools.count()
        self._changes = Changes(chrome=True)
        self._reset_session_counters()

    def _reset_session_counters(self) -> None:
        self.last_seq = 0
        # Seqs of user messages the agent has not finished answering, and those it has.
        # `_answered` is kept so a late receipt (a retry answered as a duplicate after
        # the answer already streamed) cannot bring back "thinking".
        self._unanswered: set[int] = set()
        self._answered: set[int] = set()
        self._started: set[int] = set()
        self._open_answers: set[str] = set()

    # -- inputs: the outbox ---------------------------------------------------------------

    def outbox_event(self, event: OutboxEvent) -> None:
        """A `send_pending`, `send_failed` or `send_accepted` for a message of this session."""
        if event.session_id != self.session_id:
            return
        entry = self._own.get(event.client_msg_id)
        if entry is None:
            entry = self._add(
                "user",
                f"u:{event.client_msg_id}",
                event.text,
                client_msg_id=event.client_msg_id,
            )
            self._own[event.client_msg_id] = entry
        if event.type == "send_pending":
            # A new message, or the user's Retry of a failed one: in flight again,
            # and it belongs to the session as it is now.
            if entry.generation != self.generation:
                entry.generation = self.generation
                entry.seq = None
                self._changes.order = True
            self._set_delivery(entry, Delivery.PENDING)
            entry.error = entry.retry_in = entry.status = entry.attempt = None
            entry.retry_offered = False
            self.input_error = None
        elif entry.delivery is Delivery.DELIVERED:
            # The session already showed this message; a lost HTTP answer for it
            # (and its retry's failure) changes nothing for the user.
            if event.type == "send_accepted":
                self._note_receipt(entry, event.seq)
        elif event.type == "send_accepted":
            self._set_delivery(entry, Delivery.DELIVERED)
            entry.error = entry.retry_in = None
            self._note_receipt(entry, event.seq)
        elif event.will_retry:
            self._set_delivery(entry, Delivery.RETRYING)
            entry.error, entry.status = event.error, event.status
            entry.attempt, entry.retry_in = event.attempt, event.retry_in
        else:
            self._set_delivery(entry, Delivery.FAILED)
            entry.error, entry.status, entry.attempt = event.error, event.status, event.attempt
            entry.retry_in = None
            entry.retry_offered = event.status not in _NOT_RETRYABLE_STATUSES
            if event.status == 404 and "session_unknown" in (event.error or ""):
                self.session_lost("session_unknown")
        self._changes.chrome = True

    def _note_receipt(self, entry: Entry, seq: int | None) -> None:
        if seq is None or entry.generation != self.generation:
            return
        if entry.seq != seq:
            entry.seq = seq
            self._changes.order = True
        if seq not in self._answered:
            self._unanswered.add(seq)

    def _set_delivery(self, entry: Entry, delivery: Delivery) -> None:
        entry.delivery = delivery
        self._changes.entries.add(entry.key)

    # -- inputs: session events ----------------------------------------------------------------

    def session_event(self, event: Mapping[str, Any]) -> None:
        """A session event (`user_message`, `message_start`, `block_delta`, …), in seq order."""
        if event.get("sessionId") != self.session_id:
            return
        seq = event.get("seq")
        if not isinstance(seq, int) or seq <= self.last_seq:
            return  # already shown (a replay overlapping what we have)
        self.last_seq = seq
        kind = event.get("type")
        if kind == EventType.USER_MESSAGE:
            self._user_message(event, seq)
        elif kind == EventType.MESSAGE_START:
            self._message_start(event, seq)
        elif kind == EventType.BLOCK_DELTA:
            entry = self._answer(event, seq)
            entry.text += str(event.get("text", ""))
        elif kind == EventType.ERROR:
            self._agent_error(event, seq)
        elif kind == EventType.MESSAGE_END:
            self._message_end(event, seq)
        elif kind == EventType.SESSION_ENDED:
            self.session_lost("session_ended")
        self._changes.chrome = True

    def _user_message(self, event: Mapping[str, Any], seq: int) -> None:
        client_msg_id = str(event.get("clientMsgId", ""))
        entry = self._own.get(client_msg_id)
        if entry is None:
            entry = self._add(
                "user", f"u{self.generation}:{seq}", str(event.get("text", "")), seq=seq
            )
            entry.client_msg_id = client_msg_id
        else:
            # Evidence about this message: it is in the session, whatever the outbox said.
            entry.generation = self.generation
            entry.seq = seq
            entry.delivery = Delivery.DELIVERED
            entry.error = entry.retry_in = None
            entry.retry_offered = False
            self._changes.entries.add(entry.key)
            self._changes.order = True
        if seq not in self._answered:
            self._unanswered.add(seq)

    def _message_start(self, event: Mapping[str, Any], seq: int) -> None:
        entry = self._answer(event, seq)
        reply_to = event.get("replyTo")
        if not isinstance(reply_to, int):
            # Without replyTo: the agent answers in order, so it is the oldest unanswered.
            waiting = sorted(self._unanswered - self._started)
            reply_to = waiting[0] if waiting else None
        entry.reply_to = reply_to
        if reply_to is not None:
            self._started.add(reply_to)
        self._open_answers.add(entry.key)

    def _answer(self, event: Mapping[str, Any], seq: int) -> Entry:
        message_id = str(event.get("messageId", ""))
        key = f"a{self.generation}:{message_id}"
        entry = self._entries.get(key)
        if entry is None:
            # Also for a delta whose message_start was trimmed from the history.
            entry = self._add("agent", key, "", seq=seq)
            entry.message_id = message_id
        self._changes.entries.add(key)
        return entry

    def _agent_error(self, event: Mapping[str, Any], seq: int) -> None:
        message = str(event.get("message") or "the agent failed")
        if event.get("messageId"):
            entry = self._answer(event, seq)
            entry.error = message
        else:
            self._add("notice", f"n{self.generation}:{seq}", message, seq=seq).error = message

    def _message_end(self, event: Mapping[str, Any], seq: int) -> None:
        entry = self._answer(event, seq)
        entry.done = True
        self._open_answers.discard(entry.key)
        if entry.reply_to is not None:
            self._unanswered.discard(entry.reply_to)
            self._answered.add(entry.reply_to)

    # -- inputs: the connection -----------------------------------------------------------

    def status_changed(self, change: StatusChange) -> None:
        """The event stream's status changed."""
        self.status = change.status
        self.status_change = change
        if change.max_attempts:
            self.max_attempts = change.max_attempts
        if change.status is ConnectionStatus.CONNECTED:
            # Evidence about the connection itself: it works again.
            self._banners.pop("connection_refused", None)
        elif change.status is ConnectionStatus.FAILED:
            self._banners["connection_refused"] = Banner(
                "connection_refused",
                f"The server refused the connection ({change.error}). "
                "Check server_url and token, then reconnect.",
                "Reconnect",
            )
        self._changes.chrome = True

    def session_lost(self, reason: str) -> None:
        """The session no longer exists (`session_ended`, or 404 `session_unknown`)."""
        why = "it was deleted" if reason == "session_ended" else "the server does not know it"
        self._banners["session_unknown"] = Banner(
            "session_unknown",
            f"Session “{self.session_id}” no longer exists: {why}.",
            "Start a new session",
        )
        self._changes.chrome = True

    def setup_failed(self, error: str) -> None:
        """Opening the session failed for a reason other than the connection."""
        self._banners["setup_failed"] = Banner(
            "setup_failed", f"Could not open session “{self.session_id}”: {error}", "Try again"
        )
        self._changes.chrome = True

    def session_opened(self) -> None:
        """The session is watched and driven from here: clears what opening it resolves."""
        self._banners.pop("setup_failed", None)
        self.detached_reason = None
        self._changes.chrome = True

    def detached(self, reason: str) -> None:
        """This client no longer drives the session (`detached` frame)."""
        self.detached_reason = reason
        self._changes.chrome = True

    def send_refused(self, error: str) -> None:
        """A message was not even queued (e.g. the outbox is full): say so at the input."""
        self.input_error = error
        self._changes.chrome = True

    def new_session(self) -> None:
        """The session was started again under the same id: a fresh conversation follows."""
        self.generation += 1
        self._reset_session_counters()
        self._banners.pop("session_unknown", None)
        # seq 0: first in its generation, before anything the new session numbers.
        self._add("notice", f"n{self.generation}:start", f"New session “{self.session_id}”", seq=0)
        self._changes.chrome = True

    # -- outputs ---------------------------------------------------------------------------

    @property
    def entries(self) -> list[Entry]:
        """The message list in display order."""
        return sorted(self._entries.values(), key=Entry.sort_key)

    def entry(self, key: str) -> Entry:
        """One entry by key."""
        return self._entries[key]

    def own(self, client_msg_id: str) -> Entry | None:
        """The entry of a message sent from this view."""
        return self._own.get(client_msg_id)

    @property
    def unfinished(self) -> list[Entry]:
        """Messages sent from here that are still pending or retrying, in send order."""
        return [
            e
            for e in sorted(self._own.values(), key=lambda e: e.order)
            if e.delivery in (Delivery.PENDING, Delivery.RETRYING)
        ]

    @property
    def banner(self) -> Banner | None:
        """The banner to show, if any."""
        for kind in _BANNER_PRIORITY:
            if kind in self._banners:
                return self._banners[kind]
        return None

    @property
    def session_gone(self) -> bool:
        """True while the session-unknown banner stands."""
        return "session_unknown" in self._banners

    @property
    def thinking(self) -> bool:
        """True while the agent works (or is about to) on a message of the live session."""
        if self.status in _DEAD_STATUSES or self.session_gone:
            return False
        pending = any(
            e.delivery is Delivery.PENDING and e.generation == self.generation
            for e in self._own.values()
        )
        return pending or bool(self._unanswered) or bool(self._open_answers)

    @property
    def status_line(self) -> str:
        """The connection status, short: "connected", "reconnecting 2 of 6…", "offline"."""
        change = self.status_change
        if self.status is ConnectionStatus.RECONNECTING:
            return f"reconnecting {change.attempt} of {change.max_attempts or self.max_attempts}…"
        if self.status is ConnectionStatus.OFFLINE:
            return "offline"
        if self.status is ConnectionStatus.FAILED:
            return "connection refused"
        if self.status in (ConnectionStatus.IDLE, ConnectionStatus.CONNECTING):
            return "connecting…"
        return str(self.status.value)

    @property
    def status_detail(self) -> str | None:
        """A longer explanation of the status, when there is one."""
        change = self.status_change
        if self.status is ConnectionStatus.RECONNECTING and change.retry_in is not None:
            return f"next try in {change.retry_in:.0f} s ({change.error})"
        if self.status is ConnectionStatus.OFFLINE:
            return f"gave up after {self.max_attempts} attempts ({change.error})"
        if self._can_take_over:
            return _DETACHED_WORDS.get(self.detached_reason or "", _NOT_DRIVING)
        return None

    @property
    def status_action(self) -> str | None:
        """The action offered next to the status line: "Reconnect", "Take over" or None."""
        if self.status in (ConnectionStatus.OFFLINE, ConnectionStatus.FAILED):
            return "Reconnect"
        if self._can_take_over and self.status is ConnectionStatus.CONNECTED:
            return "Take over"
        return None

    @property
    def _can_take_over(self) -> bool:
        """Detached for a reason that attaching again undoes. One status per cause: a gone
        session shows only its banner and its action, never a Take over that cannot work."""
        reason = self.detached_reason
        return reason is not None and reason != "session_ended" and not self.session_gone

    def take_changes(self) -> Changes:
        """What changed since the last call (and forget it)."""
        changes, self._changes = self._changes, Changes()
        return changes

    def summary(self) -> dict[str, Any]:
        """A plain snapshot of everything shown, for tests, notebooks and logs."""
        messages: list[dict[str, Any]] = []
        for entry in self.entries:
            item: dict[str, Any] = {"role": entry.role, "text": entry.text}
            if entry.seq is not None:
                item["seq"] = entry.seq
            if entry.delivery is not None:
                item["delivery"] = entry.delivery.value
            if entry.role == "agent":
                item["done"] = entry.done
            if entry.error:
                item["error"] = entry.error
            messages.append(item)
        banner = self.banner
        return {
            "session": self.session_id,
            "status": self.status_line,
            "thinking": self.thinking,
            "banner": banner.text if banner else None,
            "messages": messages,
        }

    # -- internals -------------------------------------------------------------------------

    def _add(
        self, role: Role, key: str, text: str, *, seq: int | None = None, **extra: Any
    ) -> Entry:
        entry = Entry(key, role, text, self.generation, next(self._order), seq=seq, **extra)
        self._entries[key] = entry
        self._changes.entries.add(key)
        self._changes.order = True
        return entry
