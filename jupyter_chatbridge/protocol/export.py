"""A session's events as something a user can keep: JSON Lines, Markdown, a notebook, text.

Pure functions of `(session_id, events)`, where `events` are session event objects
as the wire contract defines them (the REST history, the store's rows, the stream),
so the `jupyter chatbridge` command and the Python client produce the same bytes.

Turning events into a conversation (who said what, how each answer ended) is
`conversation()`; the renderers only format its messages.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from . import EventType, dumps

FORMATS: Final = ("jsonl", "markdown", "ipynb")
"""What `render` writes; `ipynb` is an nbformat v4 notebook of markdown cells."""

FILE_SUFFIXES: Final = {"jsonl": ".jsonl", "markdown": ".md", "ipynb": ".ipynb"}

Role = Literal["user", "assistant", "notice"]
Ending = Literal["complete", "error", "running", ""]


@dataclass(frozen=True)
class ExportMessage:
    """One entry of a conversation as it is exported."""

    role: Role
    text: str
    seq: int
    """The seq of the event that began it (the user message, the answer's start)."""
    ending: Ending = ""
    """How an answer ended: complete, error (see `error`) or still running."""
    error: str = ""


def conversation(events: Sequence[Mapping[str, Any]]) -> list[ExportMessage]:
    """Who said what, in seq order, and how each answer ended."""
    messages: list[ExportMessage] = []
    answers: dict[str, int] = {}  # messageId -> index in `messages`
    ordered = sorted(events, key=lambda e: int(e.get("seq", 0)))
    if ordered and int(ordered[0].get("seq", 1)) > 1:
        first = int(ordered[0]["seq"])
        messages.append(
            ExportMessage("notice", f"Events before seq {first} were trimmed from history.", 0)
        )

    def answer(event: Mapping[str, Any]) -> int:
        # An answer whose start was trimmed still shows what is left of it.
        message_id = str(event.get("messageId"))
        if message_id not in answers:
            answers[message_id] = len(messages)
            messages.append(ExportMessage("assistant", "", int(event["seq"]), "running"))
        return answers[message_id]

    def update(index: int, **changes: Any) -> None:
        old = messages[index]
        messages[index] = ExportMessage(
            old.role,
            changes.get("text", old.text),
            old.seq,
            changes.get("ending", old.ending),
            changes.get("error", old.error),
        )

    for event in ordered:
        kind = event.get("type")
        if kind == EventType.USER_MESSAGE:
            messages.append(ExportMessage("user", str(event.get("text", "")), int(event["seq"])))
        elif kind == EventType.MESSAGE_START:
            answer(event)
        elif kind == EventType.BLOCK_DELTA:
            index = answer(event)
            update(index, text=messages[index].text + str(event.get("text", "")))
        elif kind == EventType.MESSAGE_END:
            index = answer(event)
            if messages[index].ending == "running":
                update(index, ending="complete")
        elif kind == EventType.ERROR:
            text = str(event.get("message", ""))
            if event.get("messageId") is not None:
                update(answer(event), ending="error", error=text)
            else:
                messages.append(ExportMessage("notice", f"Error: {text}", int(event["seq"])))
        elif kind == EventType.SESSION_ENDED:
            messages.append(ExportMessage("notice", "The session ended.", int(event["seq"])))
    return messages


def _tidy(text: str) -> str:
    # Agents stream words with trailing spaces; a kept file shows none.
    return "\n".join(line.rstrip() for line in text.splitlines()).strip("\n")


_HEADINGS: Final = {"user": "User", "assistant": "Assistant"}


def _ending_note(message: ExportMessage) -> str:
    if message.ending == "error":
        return f"The answer ended with an error: {message.error}"
    if message.ending == "running":
        return "The answer was still running when this was exported."
    return ""


def message_markdown(message: ExportMessage) -> str:
    """One message as a Markdown block (a notebook cell's source)."""
    if message.role == "notice":
        return f"*{message.text}*"
    parts = [f"**{_HEADINGS[message.role]}**", _tidy(message.text) or "*(no text)*"]
    note = _ending_note(message)
    if note:
        parts.append(f"*{note}*")
    return "\n\n".join(parts)


def to_markdown(session_id: str, messages: Sequence[ExportMessage]) -> str:
    """The conversation as one Markdown document."""
    blocks = [f"# Chat session `{session_id}`", *(message_markdown(m) for m in messages)]
    return "\n\n".join(blocks) + "\n"


def to_notebook(session_id: str, messages: Sequence[ExportMessage]) -> dict[str, Any]:
    """An nbformat v4.5 notebook: a title cell, then one markdown cell per message.

    Cell ids derive from seqs, so exporting the same history twice gives the same file.
    """
    cells = [_markdown_cell("title", f"# Chat session `{session_id}`")]
    for number, message in enumerate(messages):
        cells.append(
            _markdown_cell(f"{message.role}-{message.seq}-{number}", message_markdown(message))
        )
    return {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {"chatbridge": {"sessionId": session_id}},
        "cells": cells,
    }


def _markdown_cell(cell_id: str, source: str) -> dict[str, Any]:
    return {"cell_type": "markdown", "id": cell_id, "metadata": {}, "source": source}


def to_jsonl(events: Sequence[Mapping[str, Any]]) -> str:
    """The events themselves, one compact JSON object per line, in seq order."""
    ordered = sorted(events, key=lambda e: int(e.get("seq", 0)))
    return "".join(dumps(dict(event)) + "\n" for event in ordered)


def to_text(session_id: str, messages: Sequence[ExportMessage]) -> str:
    """The conversation for a terminal: a heading per message, its text indented."""
    lines = [f"session {session_id}"]
    for message in messages:
        lines.append("")
        if message.role == "notice":
            lines.append(f"({message.text})")
            continue
        state = f", {message.ending}" if message.ending else ""
        lines.append(f"{message.role} [seq {message.seq}{state}]")
        lines.extend("  " + line for line in (_tidy(message.text) or "(no text)").splitlines())
        if message.ending == "error":
            lines.append(f"  ! {message.error}")
    return "\n".join(lines) + "\n"


def render(fmt: str, session_id: str, events: Sequence[Mapping[str, Any]]) -> str:
    """The export of `events` in `fmt` (one of `FORMATS`), as the text of a file."""
    if fmt == "jsonl":
        return to_jsonl(events)
    messages = conversation(events)
    if fmt == "markdown":
        return to_markdown(session_id, messages)
    if fmt == "ipynb":
        return json.dumps(to_notebook(session_id, messages), indent=1, ensure_ascii=False) + "\n"
    raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
