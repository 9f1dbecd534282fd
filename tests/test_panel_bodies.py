# ruff: noqa: F811  (the fixtures of tests/widget_support.py, imported by name)
"""A long answer streaming in: its Markdown is rendered again only as often as its cost
allows, what it ends with is always drawn whole, and a delta that was held back is drawn
when its time comes even if no other event follows. In the unit tests time is a fake clock
that the fake renderer advances by what each render "costs"; the last test streams a real
200 KB answer into a widget."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import ClassVar

import pytest

from jupyter_chatbridge.client.stream import ConnectionStatus, StatusChange
from jupyter_chatbridge.server.agents import Agent, UserMessage
from jupyter_chatbridge.ui.answer_bodies import AnswerBodies
from jupyter_chatbridge.ui.chatview import Changes, ChatView, Entry
from jupyter_chatbridge.ui.panel import ChatPanel

from .support import eventually
from .test_chatview import SID, Session
from .widget_support import (  # noqa: F401 - fixtures
    WidgetFactory,
    connected,
    idle,
    make_widget,
    messages,
    widget_clock,
)


class Renders:
    """A renderer whose every call takes `cost` seconds of the fake clock."""

    def __init__(self, cost: float) -> None:
        self.now = 0.0
        self.cost = cost
        self.texts: list[str] = []

    def clock(self) -> float:
        return self.now

    def render(self, text: str) -> str:
        self.texts.append(text)
        self.now += self.cost
        return f"<p>{text}</p>"


def streaming(text: str) -> ChatView:
    view = ChatView(SID)
    view.status_changed(StatusChange(ConnectionStatus.CONNECTED))
    session = Session(view)
    session.event("message_start", messageId="m1")
    session.event("block_delta", messageId="m1", text=text)
    return view


def delta(view: ChatView, text: str) -> None:
    view.session_event(
        {"type": "block_delta", "sessionId": SID, "seq": view.last_seq + 1, "messageId": "m1"}
        | {"text": text}
    )


def end(view: ChatView) -> None:
    view.session_event(
        {"type": "message_end", "sessionId": SID, "seq": view.last_seq + 1, "messageId": "m1"}
        | {"reason": "complete"}
    )


def answer_of(view: ChatView) -> Entry:
    return next(entry for entry in view.entries if entry.role == "agent")


def test_a_streaming_answer_renders_again_only_after_five_times_its_cost() -> None:
    renders = Renders(cost=0.2)  # a long answer: 200 ms a render
    bodies = AnswerBodies(renders.render, renders.clock, share=0.2)
    view = streaming("a")
    answer = answer_of(view)
    assert bodies.html(answer) == "<p>a</p>"  # t = 0.2
    delta(view, "b")
    renders.now = 0.5
    assert bodies.html(answer) == "<p>a</p>"  # held back: the last render was 0.3 s ago
    assert bodies.due() == set() and bodies.next_due_in() == pytest.approx(0.7)
    assert bodies.html(answer) == "<p>a</p>" and renders.texts == ["a"]
    renders.now = 1.2
    assert bodies.due() == {answer.key}
    assert bodies.html(answer) == "<p>ab</p>"
    assert bodies.next_due_in() is None
    # Its end is drawn at once, however soon after the last render.
    delta(view, "c")
    end(view)
    assert bodies.html(answer) == "<p>abc</p>"
    assert bodies.html(answer) == "<p>abc</p>" and renders.texts == ["a", "ab", "abc"]


def test_a_short_answer_renders_on_every_change_and_gone_answers_are_forgotten() -> None:
    renders = Renders(cost=0.001)
    bodies = AnswerBodies(renders.render, renders.clock, share=0.2)
    view = streaming("a")
    answer = answer_of(view)
    for text in ("b", "c", "d"):
        bodies.html(answer)
        delta(view, text)
        renders.now += 0.05  # the panel's own pace
    assert bodies.html(answer) == "<p>abcd</p>"
    assert renders.texts == ["a", "ab", "abc", "abcd"]
    bodies.keep_only([])
    assert bodies.html(answer) == "<p>abcd</p>" and len(renders.texts) == 5


def test_the_panel_draws_a_held_back_delta_when_it_is_due() -> None:
    renders = Renders(cost=0.2)
    panel = ChatPanel(
        height="360px",
        max_messages=100,
        on_text=lambda _: True,
        on_retry=lambda _: None,
        on_banner_action=lambda: None,
        on_status_action=lambda: None,
    )
    panel.bodies = AnswerBodies(renders.render, renders.clock, share=0.2)
    view = streaming("first words")
    panel.draw(view, view.take_changes())
    (row,) = panel.rows.values()
    assert "<p>first words" in row.html.value and panel.redraw_in is None
    delta(view, " and more")
    panel.draw(view, view.take_changes())
    assert "and more" not in row.html.value  # held back
    assert panel.redraw_in == pytest.approx(1.0)  # five times the render's 0.2 s
    panel.draw(view, Changes())  # too early: nothing changes
    assert "and more" not in row.html.value
    renders.now += panel.redraw_in or 0.0
    assert panel.redraw_in == 0.0
    panel.draw(view, Changes())  # no event came: the widget draws because it is due
    assert "<p>first words and more" in row.html.value and panel.redraw_in is None
    panel.close()


# -- in the widget -------------------------------------------------------------------------


class LongAgent(Agent):
    """Streams a long Markdown answer in 2 KB deltas, then waits at the gate it was given
    (the answer is still open: only the held-back redraw can show its end)."""

    gate: ClassVar[asyncio.Event | None] = None

    async def reply(self, message: UserMessage) -> AsyncIterator[str]:  # type: ignore[override]
        for chunk in long_markdown(LONG_ANSWER_BYTES):
            yield chunk
            await asyncio.sleep(0)
        assert LongAgent.gate is not None
        await LongAgent.gate.wait()
        yield "\n\nThe end."


LONG_ANSWER_BYTES = 200_000


def long_markdown(size: int) -> list[str]:
    part = "A paragraph with *emphasis*, `code` and a [link](https://example.com).\n\n"
    part += "- an item\n- another item\n\n```python\nprint('hello')\n```\n\n"
    text = (part * (size // len(part) + 1))[:size] + " the last words"
    return [text[i : i + 2000] for i in range(0, len(text), 2000)]


@pytest.mark.chatbridge(agent_class=LongAgent)
async def test_a_200_kb_answer_is_drawn_whole_while_it_still_streams(
    make_widget: WidgetFactory,
) -> None:
    LongAgent.gate = asyncio.Event()
    try:
        widget = make_widget()
        await connected(widget)
        widget.send_message("a long one, please")
        answer = "".join(long_markdown(LONG_ANSWER_BYTES))

        def drawn() -> str:
            rows = widget._on_loop(lambda: list(widget._panel.rows.values()))
            return str(rows[-1].html.value) if len(rows) == 2 else ""

        await eventually(lambda: "the last words" in drawn(), 30)
        assert widget.thinking  # the answer is still open: the held-back draw came by itself
        (entry,) = [m for m in messages(widget) if m["role"] == "agent"]
        assert entry["text"] == answer and not entry["done"]
        assert drawn().count("<li>an item</li>") == answer.count("- an item")
        LongAgent.gate.set()
        await idle(widget)
        assert "The end.</p>" in drawn() and "▍" not in drawn()
    finally:
        LongAgent.gate.set()
