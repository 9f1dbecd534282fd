"""The transcript reducer: session events and outbox events in, the conversation out.

Every client shows the same thing from the same inputs: each user message with
its delivery state, the agent's answers (text, done, error), notices, whether the
agent is thinking, and how the session stands. Inputs are plain dicts (the wire's
events, the outbox's `send_*` events with `retryInMs`, and a few client facts);
`snapshot()` is plain JSON-able data, the form the conformance vectors compare.

Rules kept here (docs/client-rules.md, "transcript"):

- seq order: an event at or below `lastSeq` is a duplicate and ignored; one past
  a hole is held back and `gap` says which seqs to fetch from history; the held
  events apply, in order, once the hole is filled; what history no longer has
  is skipped.
- a server that rewound (its lastSeq behind what was shown) loses what came
  after: those entries go (an answer begun before is cut back to what the
  server kept), and our own messages among them become failed, offered a
  Retry, since the server no longer has them.
- a delivery state changes only on evidence about that message (its own
  `send_*` events, its `user_message`); a final failure is offered a Retry
  exactly when the outbox says it is `retryable`.
- an answer's end state (`ended`) is its `message_end`'s `reason` (`complete`,
  `stopped`, `error`, `interrupted`); without one (an older server), `error` if
  an error event named it, else `complete`. A stopped answer keeps its text.
- "thinking" is derived, never stored: a message of ours still pending, a user
  message not yet answered, or an answer still streaming, while the session lives.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .messages import ENDINGS, LOST_BY_SERVER, Delivery, Message, Role
from .outbox_machine import outcome_of

__all__ = ["Delivery", "Message", "Touched", "Transcript"]


@dataclass
class Touched:
    """What one input changed, so a renderer redraws only that."""

    keys: set[str] = field(default_factory=set)
    reordered: bool = False


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class Transcript:
    """The reducer's state for one session id; `apply` takes any input kind."""

    def __init__(self, session_id: str | None = None) -> None:
        self.session_id = session_id
        self.generation = 0
        self.messages: dict[str, Message] = {}
        self.own: dict[str, Message] = {}  # clientMsgId -> message sent from here
        self._order = itertools.count()
        self._touched = Touched()
        self._reset_session()

    def _reset_session(self) -> None:
        self.last_seq: int | None = None  # None: nothing seen yet, the first seq starts it
        self.ended: str | None = None
        self.rewound: dict[str, int] | None = None
        self.held: dict[int, dict[str, Any]] = {}
        # Seqs of user messages not yet answered, and those answered (so a late receipt
        # cannot bring "thinking" back), and those whose answer started.
        self.unanswered: set[int] = set()
        self.answered: set[int] = set()
        self.started: set[int] = set()
        self.open_answers: set[str] = set()

    # -- the one entry point -----------------------------------------------------------

    def apply(self, item: Mapping[str, Any]) -> Touched:
        """Apply one input: {"kind": "event"|"outbox"|"history"|"watched"|"skip_gap"|...}."""
        self._touched = Touched()
        kind = item.get("kind")
        if kind == "event":
            self.session_event(item["event"])
        elif kind == "outbox":
            self.outbox_event(item["event"])
        elif kind == "watched":
            self.watched(int(item["lastSeq"]))
        elif kind == "history":
            self.history(item["events"])
        elif kind == "skip_gap":
            self.skip_gap()
        elif kind == "lost":
            self.lost(str(item.get("reason") or "session_unknown"))
        elif kind == "new_session":
            self.new_session(str(item.get("text") or ""))
        else:
            raise ValueError(f"unknown transcript input: {kind!r}")
        return self._touched

    # -- session events ----------------------------------------------------------------

    def session_event(self, event: Mapping[str, Any]) -> Touched:
        """A session event as the wire carries it."""
        seq = _int(event.get("seq"))
        if seq is None or (
            self.session_id is not None and event.get("sessionId") != self.session_id
        ):
            return self._touched
        if self.last_seq is not None and seq <= self.last_seq:
            return self._touched  # a duplicate: already shown
        if self.last_seq is not None and seq > self.last_seq + 1:
            self.held.setdefault(seq, dict(event))  # past a hole: wait for history
            return self._touched
        self._apply_event(event, seq)
        self._drain_held()
        return self._touched

    @property
    def gap(self) -> dict[str, int] | None:
        """The hole to fill from history: seqs after `after` and before `before` are missing."""
        if not self.held or self.last_seq is None:
            return None
        return {"after": self.last_seq, "before": min(self.held)}

    def history(self, events: list[Mapping[str, Any]]) -> None:
        """History's answer for a gap: apply its events; a hole it cannot fill is skipped."""
        for event in events:
            self.session_event(event)
        self.skip_gap()

    def skip_gap(self) -> None:
        """History cannot fill the hole (trimmed): go on from the first held event."""
        if self.held:
            self.last_seq = min(self.held) - 1
            self._drain_held()

    def _drain_held(self) -> None:
        while self.last_seq is not None and self.last_seq + 1 in self.held:
            seq = self.last_seq + 1
            self._apply_event(self.held.pop(seq), seq)
        if self.last_seq is not None:
            for stale in [s for s in self.held if s <= self.last_seq]:
                del self.held[stale]

    def _apply_event(self, event: Mapping[str, Any], seq: int) -> None:
        self.last_seq = seq
        kind = event.get("type")
        if kind == "user_message":
            self._user_message(event, seq)
        elif kind == "message_start":
            self._message_start(event, seq)
        elif kind == "block_delta":
            answer = self._answer(event, seq)
            answer.chunks.append((seq, str(event.get("text", ""))))
            answer.text += answer.chunks[-1][1]
        elif kind == "error":
            self._agent_error(event, seq)
        elif kind == "message_end":
            self._message_end(event, seq)
        elif kind == "session_ended":
            self.ended = "session_ended"

    def _user_message(self, event: Mapping[str, Any], seq: int) -> None:
        client_msg_id = str(event.get("clientMsgId", ""))
        message = self.own.get(client_msg_id)
        if message is None:
            message = self._add("user", f"u{self.generation}:{seq}", str(event.get("text", "")))
            message.seq = seq
            message.client_msg_id = client_msg_id
        else:
            # Evidence about this message: it is in the session, whatever the outbox said.
            message.generation = self.generation
            message.seq = seq
            message.delivery = Delivery.DELIVERED
            message.error = message.retry_in_ms = None
            message.retry_offered = False
            self._touch(message, reordered=True)
        if seq not in self.answered:
            self.unanswered.add(seq)

    def _message_start(self, event: Mapping[str, Any], seq: int) -> None:
        message = self._answer(event, seq)
        reply_to = _int(event.get("replyTo"))
        if reply_to is None:
            # Without replyTo: the agent answers in order, so it is the oldest unanswered.
            waiting = sorted(self.unanswered - self.started)
            reply_to = waiting[0] if waiting else None
        message.reply_to = reply_to
        if reply_to is not None:
            self.started.add(reply_to)
        self.open_answers.add(message.key)

    def _answer(self, event: Mapping[str, Any], seq: int) -> Message:
        message_id = str(event.get("messageId", ""))
        key = f"a{self.generation}:{message_id}"
        message = self.messages.get(key)
        if message is None:
            # Also for a delta whose message_start was trimmed from the history.
            message = self._add("agent", key, "")
            message.seq = seq
            message.message_id = message_id
        self._touch(message)
        return message

    def _agent_error(self, event: Mapping[str, Any], seq: int) -> None:
        text = str(event.get("message") or "the agent failed")
        if event.get("messageId"):
            answer = self._answer(event, seq)
            answer.error, answer.error_seq = text, seq
        else:
            notice = self._add("notice", f"n{self.generation}:{seq}", text)
            notice.seq = seq
            notice.error = text

    def _message_end(self, event: Mapping[str, Any], seq: int) -> None:
        message = self._answer(event, seq)
        message.done, message.end_seq = True, seq
        reason = event.get("reason")
        if reason in ENDINGS:
            message.ended = str(reason)
        else:  # a server before reasons (or one this client does not know)
            message.ended = "error" if message.error is not None else "complete"
        self.open_answers.discard(message.key)
        if message.reply_to is not None:
            self.unanswered.discard(message.reply_to)
            self.answered.add(message.reply_to)

    # -- outbox events -----------------------------------------------------------------

    def outbox_event(self, event: Mapping[str, Any]) -> Touched:
        """`send_pending`, `send_failed` or `send_accepted` of a message sent from here."""
        if (
            self.session_id is not None
            and event.get("sessionId", self.session_id) != self.session_id
        ):
            return self._touched
        client_msg_id = str(event["clientMsgId"])
        kind = event.get("type")
        message = self.own.get(client_msg_id)
        if message is None:
            message = self._add("user", f"u:{client_msg_id}", str(event.get("text", "")))
            message.client_msg_id = client_msg_id
            self.own[client_msg_id] = message
        self._touch(message)
        if kind == "send_pending":
            # A new message, or the user's Retry: in flight again, in the session as it is now.
            if message.generation != self.generation:
                message.generation = self.generation
                message.seq = None
                self._touched.reordered = True
            message.delivery = Delivery.PENDING
            message.error = message.retry_in_ms = message.status = message.attempt = None
            message.retry_offered = False
        elif message.delivery is Delivery.DELIVERED:
            # The session already showed it; a lost HTTP answer (and its retry's failure)
            # changes nothing for the user.
            if kind == "send_accepted":
                self._note_receipt(message, _int(event.get("seq")))
        elif kind == "send_accepted":
            message.delivery = Delivery.DELIVERED
            message.error = message.retry_in_ms = None
            self._note_receipt(message, _int(event.get("seq")))
        elif event.get("willRetry"):
            message.delivery = Delivery.RETRYING
            message.error, message.status = _text(event.get("error")), _int(event.get("status"))
            message.attempt = _int(event.get("attempt"))
            retry_in = event.get("retryInMs")
            message.retry_in_ms = float(retry_in) if isinstance(retry_in, (int, float)) else None
        else:
            message.delivery = Delivery.FAILED
            message.error, message.status = _text(event.get("error")), _int(event.get("status"))
            message.attempt = _int(event.get("attempt"))
            message.retry_in_ms = None
            message.retry_offered = _retryable(event)
        return self._touched

    def _note_receipt(self, message: Message, seq: int | None) -> None:
        if seq is None or message.generation != self.generation:
            return
        if message.seq != seq:
            message.seq = seq
            self._touched.reordered = True
        if seq not in self.answered:
            self.unanswered.add(seq)

    # -- facts about the session ------------------------------------------------------------

    def watched(self, last_seq: int) -> None:
        """A (re)watch answered: the server's newest seq. Behind what we showed: it rewound."""
        if self.last_seq is None or last_seq >= self.last_seq:
            return
        self.rewound = {"from": self.last_seq, "to": last_seq}
        self.last_seq = last_seq
        self.held.clear()
        for seqs in (self.unanswered, self.answered, self.started):
            seqs.difference_update({s for s in seqs if s > last_seq})
        for message in list(self.messages.values()):
            if message.generation != self.generation or message.seq is None:
                continue
            if message.seq <= last_seq:
                if message.role == "agent":
                    self._cut_back(message, last_seq)
                continue
            self._touch(message, reordered=True)
            if message.client_msg_id in self.own and message is self.own[message.client_msg_id]:
                message.seq = None
                message.delivery = Delivery.FAILED
                message.error = LOST_BY_SERVER
                message.retry_offered = True
                message.retry_in_ms = message.status = None
            else:
                del self.messages[message.key]
                self.open_answers.discard(message.key)
                reply_to = message.reply_to
                if message.role == "agent" and reply_to is not None and reply_to <= last_seq:
                    # Its question survived, its answer did not: it waits for one again.
                    self.started.discard(reply_to)
                    self.answered.discard(reply_to)
                    self.unanswered.add(reply_to)

    def _cut_back(self, answer: Message, last_seq: int) -> None:
        """An answer that began before the rewind keeps only what the server kept."""
        kept = [chunk for chunk in answer.chunks if chunk[0] <= last_seq]
        unchanged = len(kept) == len(answer.chunks)
        if unchanged and max(answer.end_seq or 0, answer.error_seq or 0) <= last_seq:
            return
        self._touch(answer)
        answer.chunks = kept
        answer.text = "".join(text for _, text in kept)
        if (answer.error_seq or 0) > last_seq:
            answer.error = answer.error_seq = None
        if (answer.end_seq or 0) > last_seq:
            answer.done, answer.end_seq, answer.ended = False, None, None
            self.open_answers.add(answer.key)
            if answer.reply_to is not None:
                self.answered.discard(answer.reply_to)
                self.unanswered.add(answer.reply_to)

    def lost(self, reason: str) -> None:
        """The session no longer exists (404 `session_unknown`, or it ended)."""
        self.ended = reason

    def new_session(self, notice: str) -> None:
        """The session was started again under the same id: a fresh conversation follows."""
        self.generation += 1
        self._reset_session()
        # seq 0: first in its generation, before anything the new session numbers.
        start = self._add("notice", f"n{self.generation}:start", notice)
        start.seq = 0

    # -- outputs -----------------------------------------------------------------------

    def ordered(self) -> list[Message]:
        """The messages in display order."""
        return sorted(self.messages.values(), key=Message.sort_key)

    @property
    def thinking(self) -> bool:
        """True while the agent works (or is about to) on a message of the live session."""
        if self.ended is not None:
            return False
        pending = any(
            m.delivery is Delivery.PENDING and m.generation == self.generation
            for m in self.own.values()
        )
        return pending or bool(self.unanswered) or bool(self.open_answers)

    def answer_to(self, client_msg_id: str) -> Message | None:
        """The agent's answer to a message sent from here, once it started."""
        message = self.own.get(client_msg_id)
        if message is None or message.seq is None or message.generation != self.generation:
            return None
        for candidate in self.messages.values():
            if (
                candidate.role == "agent"
                and candidate.generation == self.generation
                and candidate.reply_to == message.seq
            ):
                return candidate
        return None

    def snapshot(self) -> dict[str, Any]:
        """Everything shown, as plain data (the conformance vectors' expected output)."""
        return {
            "generation": self.generation,
            "lastSeq": self.last_seq,
            "ended": self.ended,
            "gap": self.gap,
            "rewound": self.rewound,
            "thinking": self.thinking,
            "messages": [m.to_dict() for m in self.ordered()],
        }

    # -- internals -----------------------------------------------------------------------

    def _add(self, role: Role, key: str, text: str) -> Message:
        message = Message(key, role, text, self.generation, next(self._order))
        self.messages[key] = message
        self._touch(message, reordered=True)
        return message

    def _touch(self, message: Message, *, reordered: bool = False) -> None:
        self._touched.keys.add(message.key)
        if reordered:
            self._touched.reordered = True


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _retryable(event: Mapping[str, Any]) -> bool:
    """A final failure is offered a Retry when the outbox says it is retryable.

    Without that flag (an older producer), the same table decides from the status.
    """
    flag = event.get("retryable")
    if isinstance(flag, bool):
        return flag
    return outcome_of(_int(event.get("status"))) != "refused"
