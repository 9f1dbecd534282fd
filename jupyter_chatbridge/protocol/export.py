"""A session's events as something a user can keep: JSON Lines, Markdown, a notebook, text.

Pure functions of `(session_id, events)`, where `events` are session event objects
as the wire contract defines them (the REST history, the store's rows, the stream),
so the `jupyter chatbridge` command and the Python client produce the same bytes.

Turning events into a conversation (who said what, how each answer ended) is the
shared transcript reducer's job (`transcript.Transcript`, the rule every client
shows); `conversation()` feeds it a history, and the renderers only format it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from . import dumps
from .transcript import Message, Transcript

FORMATS: Final = ("jsonl", "markdown", "ipynb")
"""What `render` writes; `ipynb` is an nbformat v4 notebook of markdown cells."""

Ending = Literal["complete", "stopped", "error", "running"]


@dataclass(frozen=True)
class Conversation:
    """What an export shows: the transcript's messages and two facts about the history."""

    session_id: str
    messages: list[Message]
    first_seq: int | None
    """The seq of the oldest event given (history before it was trimmed), None if none."""
    ended: bool
    """The session ended (its `session_ended` event is in the history)."""


def conversation(session_id: str, events: Sequence[Mapping[str, Any]]) -> Conversation:
    """Who said what, and how each answer ended: the shared transcript reducer's reading."""
    transcript = Transcript(session_id)
    seqs = [seq for seq in (e.get("seq") for e in events) if isinstance(seq, int)]
    for event in sorted(events, key=lambda e: int(e.get("seq", 0))):
        transcript.session_event(event)
    while transcript.gap is not None:  # a hole no history can fill: show what is there
        transcript.skip_gap()
    return Conversation(
        session_id,
        [m for m in transcript.ordered() if m.role != "notice" or m.text],
        min(seqs) if seqs else None,
        transcript.ended is not None,
    )


def ending(message: Message) -> Ending:
    """How an agent's answer ended: complete, stopped (by a user's Stop), with an error,
    or not yet (running)."""
    if message.error:
        return "error"
    if not message.done:
        return "running"
    return "stopped" if message.ended == "stopped" else "complete"


def _tidy(text: str) -> str:
    # Agents stream words with trailing spaces; a kept file shows none.
    return "\n".join(line.rstrip() for line in text.splitlines()).strip("\n")


_HEADINGS: Final = {"user": "User", "agent": "Agent"}


def _ending_note(message: Message) -> str:
    if message.role != "agent":
        return ""
    state = ending(message)
    if state == "error":
        return f"The answer ended with an error: {message.error}"
    if state == "running":
        return "The answer was still running when this was exported."
    if state == "stopped":
        return "The answer was stopped before it completed."
    return ""


def _notices(chat: Conversation) -> tuple[list[str], list[str]]:
    """What to say before and after the messages."""
    before = []
    if chat.first_seq is not None and chat.first_seq > 1:
        before.append(f"Events before seq {chat.first_seq} were trimmed from history.")
    return before, (["The session ended."] if chat.ended else [])


def message_markdown(message: Message) -> str:
    """One message as a Markdown block (a notebook cell's source)."""
    if message.role == "notice":
        return f"*{message.text}*"
    parts = [f"**{_HEADINGS[message.role]}**", _tidy(message.text) or "*(no text)*"]
    note = _ending_note(message)
    if note:
        parts.append(f"*{note}*")
    return "\n\n".join(parts)


def _blocks(chat: Conversation) -> list[tuple[str, str]]:
    """(cell id, markdown) for the title, the notices and each message, in order."""
    before, after = _notices(chat)
    blocks = [("title", f"# Chat session `{chat.session_id}`")]
    blocks.extend((f"notice-{i}", f"*{text}*") for i, text in enumerate(before))
    blocks.extend(
        (f"{m.role}-{m.seq}-{number}", message_markdown(m))
        for number, m in enumerate(chat.messages)
    )
    blocks.extend((f"end-{i}", f"*{text}*") for i, text in enumerate(after))
    return blocks


def to_markdown(chat: Conversation) -> str:
    """The conversation as one Markdown document."""
    return "\n\n".join(markdown for _, markdown in _blocks(chat)) + "\n"


def to_notebook(chat: Conversation) -> dict[str, Any]:
    """An nbformat v4.5 notebook: one markdown cell for the title and for each message.

    Cell ids derive from seqs, so exporting the same history twice gives the same file.
    """
    return {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {"chatbridge": {"sessionId": chat.session_id}},
        "cells": [
            {"cell_type": "markdown", "id": cell_id, "metadata": {}, "source": markdown}
            for cell_id, markdown in _blocks(chat)
        ],
    }


def to_jsonl(events: Sequence[Mapping[str, Any]]) -> str:
    """The events themselves, one compact JSON object per line, in seq order."""
    ordered = sorted(events, key=lambda e: int(e.get("seq", 0)))
    return "".join(dumps(dict(event)) + "\n" for event in ordered)


def to_text(chat: Conversation) -> str:
    """The conversation for a terminal: a heading per message, its text indented."""
    before, after = _notices(chat)
    lines = [f"session {chat.session_id}"]
    lines.extend(f"({text})" for text in before)
    for message in chat.messages:
        lines.append("")
        if message.role == "notice":
            lines.append(f"({message.text})")
            continue
        state = f", {ending(message)}" if message.role == "agent" else ""
        lines.append(f"{message.role} [seq {message.seq}{state}]")
        lines.extend("  " + line for line in (_tidy(message.text) or "(no text)").splitlines())
        if message.role == "agent" and message.error:
            lines.append(f"  ! {message.error}")
    if after:
        lines.append("")
        lines.extend(f"({text})" for text in after)
    return "\n".join(lines) + "\n"


def render(fmt: str, session_id: str, events: Sequence[Mapping[str, Any]]) -> str:
    """The export of `events` in `fmt` (one of `FORMATS`), as the text of a file."""
    if fmt == "jsonl":
        return to_jsonl(events)
    chat = conversation(session_id, events)
    if fmt == "markdown":
        return to_markdown(chat)
    if fmt == "ipynb":
        return json.dumps(to_notebook(chat), indent=1, ensure_ascii=False) + "\n"
    raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
