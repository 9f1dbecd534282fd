"""Crash recovery as a pure function of a session's event log.

A server process that died mid-answer left a log whose last answer never got
its `message_end`, and maybe user messages that were accepted (their receipts
were committed) but never answered. `recover` reads the logged events and says
what the restarted server must do: which events to append to close the cut
answer (an `error` saying so, unless it already had one, and its `message_end`
with reason `interrupted`), and which user messages to queue for the agent again.
"""

from __future__ import annotations

import json
from collections.abc import Reversible
from dataclasses import dataclass, field
from typing import Any

from ..protocol import EventType
from .agents import Ending
from .state import LoggedEvent, PendingInput

INTERRUPTED_MESSAGE = "interrupted by a server restart"


@dataclass(frozen=True)
class Recovery:
    """What a restarted server does for one session."""

    cut_answer: str | None = None
    """The messageId of the answer the crash cut short, if one was open."""
    append: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    """Events to log, in order: (type, fields)."""
    requeue: list[PendingInput] = field(default_factory=list)
    """Accepted user messages no answer was started for, oldest first."""


def recover(events: Reversible[LoggedEvent]) -> Recovery:
    """Close an answer cut by the restart; queue accepted messages never answered.

    `events` is the log, oldest first. It is read from the newest back, only as far
    as the user message the newest answer replied to: an agent run calls this before
    each answer, and a long conversation must not make every answer parse it all.
    """
    open_answer: str | None = None
    open_has_error = False
    answered: int | None = None  # the user-message seq the newest answer replied to
    newest_start_seen = False
    ended = False  # a `message_end` came after the newest start
    errored = False  # an `error` came after the newest start
    waiting: list[LoggedEvent] = []  # user messages after `answered`, newest first
    for event in reversed(events):
        if answered is not None and event.seq <= answered:
            break  # everything older was answered
        # Only the few control events are parsed; deltas are skipped by type.
        if event.type == EventType.USER_MESSAGE:
            waiting.append(event)
        elif newest_start_seen:
            if event.type == EventType.MESSAGE_START and answered is None:
                # The newest start replied to nothing: an older one says what was answered.
                reply_to = json.loads(event.data).get("replyTo")
                if isinstance(reply_to, int):
                    answered = reply_to
        elif event.type == EventType.MESSAGE_END:
            ended = True
        elif event.type == EventType.ERROR:
            errored = True
        elif event.type == EventType.MESSAGE_START:
            newest_start_seen = True
            start = json.loads(event.data)
            if not ended:
                open_answer, open_has_error = start.get("messageId"), errored
            reply_to = start.get("replyTo")
            if isinstance(reply_to, int):
                answered = reply_to
    append: list[tuple[str, dict[str, Any]]] = []
    if open_answer is not None:
        if not open_has_error:
            append.append(
                (EventType.ERROR, {"message": INTERRUPTED_MESSAGE, "messageId": open_answer})
            )
        append.append(
            (EventType.MESSAGE_END, {"messageId": open_answer, "reason": Ending.INTERRUPTED})
        )
    requeue = []
    for event in reversed(waiting):
        if answered is not None and event.seq <= answered:
            continue
        body = json.loads(event.data)
        requeue.append(
            PendingInput(event.seq, body["clientMsgId"], body["text"], body.get("connectionId"))
        )
    return Recovery(open_answer, append, requeue)
