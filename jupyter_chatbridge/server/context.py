"""The conversation an agent is given: earlier turns rebuilt from a session's event log.

Pure functions over `LoggedEvent`s, so the agent never reads the store and the
rule for what an agent sees lives in one place.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ..protocol import EventType
from .agents import Ending, Role, Turn
from .state import LoggedEvent


@dataclass
class _Answer:
    reply_to: int
    start_seq: int
    parts: list[str] = field(default_factory=list)
    failed: bool = False
    ended: str | None = None


def conversation_before(
    events: Iterable[LoggedEvent], seq: int, max_chars: int, max_turns: int | None = None
) -> tuple[Turn, ...]:
    """The conversation before the user message `seq`, oldest first, bounded in size.

    User messages sent before `seq`, and the finished answers to them, each
    placed right after the message it answered (a message sent while an answer
    streamed still comes after that answer). An answer still running is left
    out; how one ended is `message_end`'s `reason`, or for logs without it,
    `error` if an error event named it and `complete` otherwise. Answers whose
    `message_start` was trimmed from the log are left out too.

    At most `max_chars` characters of text and `max_turns` turns are kept: the
    oldest turns are dropped first, whole.
    """
    users: list[tuple[int, str]] = []
    answers: dict[str, _Answer] = {}
    for event in events:
        kind = event.type
        if kind == EventType.USER_MESSAGE:
            if event.seq < seq:
                users.append((event.seq, json.loads(event.data)["text"]))
            continue
        if kind not in _ANSWER_EVENTS:
            continue
        body = json.loads(event.data)
        message_id = body.get("messageId")
        if kind == EventType.MESSAGE_START:
            reply_to = body.get("replyTo")
            if isinstance(reply_to, int) and reply_to < seq and isinstance(message_id, str):
                answers[message_id] = _Answer(reply_to, event.seq)
            continue
        answer = answers.get(message_id) if isinstance(message_id, str) else None
        if answer is None or answer.ended is not None:
            continue
        if kind == EventType.BLOCK_DELTA:
            answer.parts.append(body.get("text", ""))
        elif kind == EventType.ERROR:
            answer.failed = True
        else:  # message_end
            reason = body.get("reason")
            if not isinstance(reason, str):
                reason = Ending.ERROR if answer.failed else Ending.COMPLETE
            answer.ended = reason
    keyed: list[tuple[tuple[int, int, int], Turn]] = [
        ((user_seq, 0, 0), Turn(Role.USER, text)) for user_seq, text in users
    ]
    keyed.extend(
        ((a.reply_to, 1, a.start_seq), Turn(Role.ASSISTANT, "".join(a.parts), a.ended))
        for a in answers.values()
        if a.ended is not None
    )
    keyed.sort(key=lambda item: item[0])
    return trim_turns([turn for _, turn in keyed], max_chars, max_turns)


class Conversation:
    """One session's conversation so far, bounded to `max_chars`, kept up to date by the
    runner as each answer ends, so an answer's context costs no reparse of the log.

    The runner answers messages one at a time in seq order, so the conversation
    before message N is each earlier message followed by its answer: the runner
    adds the pair when an answer ends. It starts from `conversation_before` of
    the log once (a session restored after a restart, or the first answer).
    """

    def __init__(self, max_chars: int, turns: Iterable[Turn] = ()) -> None:
        self._max_chars = max_chars
        self._turns: deque[Turn] = deque()
        self._chars = 0
        for turn in turns:
            self.add(turn)

    def add(self, turn: Turn) -> None:
        """The newest turn; the oldest are dropped, whole, while over the budget."""
        self._turns.append(turn)
        self._chars += len(turn.text)
        while self._chars > self._max_chars and self._turns:
            self._chars -= len(self._turns.popleft().text)

    @property
    def turns(self) -> tuple[Turn, ...]:
        """The kept turns, oldest first (what `UserMessage.history` carries)."""
        return tuple(self._turns)


def trim_turns(
    turns: Sequence[Turn], max_chars: int | None, max_turns: int | None = None
) -> tuple[Turn, ...]:
    """The newest turns that fit in `max_chars` characters and `max_turns` turns.

    Whole turns are dropped, oldest first, so what is kept is the end of the
    conversation without gaps; None means no limit.
    """
    kept: list[Turn] = []
    chars = 0
    for turn in reversed(turns):
        if max_turns is not None and len(kept) >= max_turns:
            break
        chars += len(turn.text)
        if max_chars is not None and chars > max_chars:
            break
        kept.append(turn)
    kept.reverse()
    return tuple(kept)


_ANSWER_EVENTS = frozenset(
    {EventType.MESSAGE_START, EventType.BLOCK_DELTA, EventType.ERROR, EventType.MESSAGE_END}
)
