"""Crash recovery as a pure function of the event log (`server.recovery.recover`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from jupyter_chatbridge.server.recovery import INTERRUPTED_MESSAGE, Recovery, recover
from jupyter_chatbridge.server.state import LoggedEvent, PendingInput


def log(*events: tuple[str, dict[str, Any]]) -> list[LoggedEvent]:
    """A session's logged events, seq 1, 2, ... in order."""
    logged = []
    for seq, (event_type, fields) in enumerate(events, 1):
        body = {"type": event_type, "sessionId": "s1", "seq": seq, **fields}
        logged.append(LoggedEvent(seq, event_type, json.dumps(body)))
    return logged


def user(client_msg_id: str, text: str, cid: str | None = None) -> tuple[str, dict[str, Any]]:
    return ("user_message", {"clientMsgId": client_msg_id, "text": text, "connectionId": cid})


def start(reply_to: int) -> tuple[str, dict[str, Any]]:
    return ("message_start", {"messageId": f"m{reply_to}", "replyTo": reply_to})


def delta(reply_to: int, text: str) -> tuple[str, dict[str, Any]]:
    return ("block_delta", {"messageId": f"m{reply_to}", "text": text})


def end(reply_to: int) -> tuple[str, dict[str, Any]]:
    return ("message_end", {"messageId": f"m{reply_to}"})


def test_an_empty_or_finished_log_needs_nothing() -> None:
    assert recover([]) == Recovery()
    finished = log(user("a", "hi"), start(1), delta(1, "Echo: "), end(1))
    assert recover(finished) == Recovery()


def test_a_cut_answer_is_closed_with_an_error_and_its_end() -> None:
    cut = log(user("a", "hi"), start(1), delta(1, "Echo: "))
    assert recover(cut) == Recovery(
        cut_answer="m1",
        append=[
            ("error", {"message": INTERRUPTED_MESSAGE, "messageId": "m1"}),
            ("message_end", {"messageId": "m1", "reason": "interrupted"}),
        ],
    )


def test_a_cut_answer_that_already_reported_an_error_gets_only_its_end() -> None:
    cut = log(user("a", "hi"), start(1), ("error", {"message": "boom", "messageId": "m1"}))
    assert recover(cut).append == [("message_end", {"messageId": "m1", "reason": "interrupted"})]


def test_accepted_messages_no_answer_started_for_are_queued_again_in_order() -> None:
    events = log(
        user("a", "first", "cid-x"),
        user("b", "second"),
        user("c", "third"),
        start(1),
        delta(1, "x"),
    )
    recovery = recover(events)
    assert recovery.cut_answer == "m1"
    # The cut one is not answered again (its answer was shown, then closed).
    assert recovery.requeue == [
        PendingInput(2, "b", "second", None),
        PendingInput(3, "c", "third", None),
    ]


def test_the_connection_a_requeued_message_came_from_is_kept() -> None:
    events = log(user("a", "done"), start(1), end(1), user("b", "waiting", "cid-y"))
    assert recover(events) == Recovery(requeue=[PendingInput(4, "b", "waiting", "cid-y")])


def test_a_trimmed_log_answers_only_what_it_still_shows() -> None:
    # The oldest events were trimmed: the tail starts inside an answer to seq 1.
    events = log(user("a", "x"), start(1), delta(1, "y"), end(1), user("b", "z"))[2:]
    assert recover(events) == Recovery(requeue=[PendingInput(5, "b", "z", None)])


def test_recover_reads_and_never_changes_the_log() -> None:
    events = log(user("a", "hi"), start(1))
    before = list(events)
    recover(events)
    recover(events)
    assert events == before


class Counted(list[LoggedEvent]):
    """A log that counts how many events `recover` reads, in either direction."""

    read = 0

    def __iter__(self) -> Iterator[LoggedEvent]:
        for event in super().__iter__():
            self.read += 1
            yield event

    def __reversed__(self) -> Iterator[LoggedEvent]:
        for event in super().__reversed__():
            self.read += 1
            yield event


def test_a_long_conversation_is_read_only_back_to_the_last_answered_message() -> None:
    # An agent run recovers before each answer: its cost must not grow with the history.
    turns = [
        e for n in range(1, 2001, 4) for e in (user(f"u{n}", "q"), start(n), delta(n, "a"), end(n))
    ]
    events = Counted(log(*turns, user("last", "waiting")))
    assert len(events) == 2001
    assert recover(events) == Recovery(requeue=[PendingInput(2001, "last", "waiting", None)])
    assert events.read <= 6  # the waiting message, then back to the answered one
