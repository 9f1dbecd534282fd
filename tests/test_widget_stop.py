# ruff: noqa: F811  (the fixtures of tests/widget_support.py, imported by name)
"""Stop in `ChatWidget`, against a real in-process server: the Stop button shows while an
answer streams, stops that answer (which keeps its text and says it was stopped), never a
later one, and a Stop that fails says so next to the answer it concerns.

`GateAgent` answers "working ", then waits for the test to open its gate: an answer is
mid-stream for as long as the test wants.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from jupyter_chatbridge import ChatWidget
from jupyter_chatbridge.testing import Fault, FaultPlan

from .agents import GateAgent
from .support import eventually
from .widget_support import (  # noqa: F401 - fixtures
    WidgetFactory,
    connected,
    idle,
    make_widget,
    messages,
    row_html,
    widget_clock,
)


def answers(widget: ChatWidget) -> list[dict[str, Any]]:
    return [m for m in messages(widget) if m["role"] == "agent"]


def stop_button(widget: ChatWidget) -> Any:
    return widget._panel.stop_button


def answer_ids(widget: ChatWidget) -> list[str | None]:
    return widget._on_loop(lambda: [e.message_id for e in widget.view.entries if e.role == "agent"])


def stop_shown(widget: ChatWidget) -> bool:
    button = stop_button(widget)
    return bool(button.layout.display == "" and not button.disabled)


@pytest.mark.chatbridge(agent_class=GateAgent)
async def test_stop_ends_the_streaming_answer_and_the_queued_message_is_answered(
    make_widget: WidgetFactory, jp_serverapp: Any, gate: asyncio.Event
) -> None:
    # No faults: the plan only counts the Stop requests that reach the server.
    plan = FaultPlan().add("stop", *[Fault.none()] * 10)
    jp_serverapp.web_app.settings["chatbridge_faults"] = plan
    widget = make_widget()
    await connected(widget)
    assert stop_button(widget).layout.display == "none"  # nothing streams
    widget.send_message("first")
    widget.send_message("second")
    await eventually(lambda: [a["text"] for a in answers(widget)] == ["working "])
    await eventually(lambda: stop_shown(widget))
    assert stop_button(widget).description == "Stop"
    # Clicked twice before anything came back: one Stop, of this answer only.
    stop_button(widget).click()
    stop_button(widget).click()
    await eventually(lambda: len(answers(widget)) == 2)
    first, second = answers(widget)
    assert (first["text"], first["done"], first["ended"]) == ("working ", True, "stopped")
    await eventually(lambda: "■ stopped" in row_html(widget, "working "))
    assert "could not stop" not in row_html(widget, "working ")
    assert "▍" not in row_html(widget, "working ")  # no cursor: it streams no more
    assert len(plan.taken) == 1
    # The queued message is answered, and Stop now offers to stop that answer.
    assert (second["done"], second["ended"]) == (False, None)
    await eventually(lambda: stop_shown(widget))
    assert widget._panel._stop_target == answer_ids(widget)[1]
    gate.set()
    await idle(widget)
    first, second = answers(widget)
    assert first["ended"] == "stopped" and first["text"] == "working "
    assert (second["text"], second["ended"]) == ("working done", "complete")
    assert "■ stopped" not in row_html(widget, "working done")
    assert stop_button(widget).layout.display == "none"
    assert not widget.thinking
    # A Stop after the end changes nothing and shows nothing.
    for message_id in (None, *answer_ids(widget)):
        widget.stop(message_id)
    await idle(widget)
    assert [a["ended"] for a in answers(widget)] == ["stopped", "complete"]
    assert not any("stop_error" in a for a in answers(widget))


@pytest.mark.chatbridge(agent_class=GateAgent)
async def test_a_failed_stop_shows_next_to_its_answer_and_stop_can_be_pressed_again(
    make_widget: WidgetFactory, jp_serverapp: Any, gate: asyncio.Event
) -> None:
    widget = make_widget()
    await connected(widget)
    widget.send_message("stop me")
    await eventually(lambda: stop_shown(widget))
    jp_serverapp.web_app.settings["chatbridge_faults"] = FaultPlan().add(
        "stop", Fault.status(503), Fault.drop_before()
    )
    stop_button(widget).click()
    await eventually(lambda: "could not stop" in row_html(widget, "working "))
    assert "✗ could not stop: HTTP 503" in row_html(widget, "working ")
    (answer,) = answers(widget)
    assert answer["stop_error"].startswith("HTTP 503") and answer["ended"] is None
    await eventually(lambda: stop_shown(widget))  # offered again, and the answer streams on
    stop_button(widget).click()  # the connection drops before the server saw it
    await eventually(lambda: "TransportError" in row_html(widget, "working "))
    assert answers(widget)[0]["done"] is False
    await eventually(lambda: stop_shown(widget))
    stop_button(widget).click()  # no fault left: this one stops it
    await eventually(lambda: answers(widget)[0]["ended"] == "stopped")
    await idle(widget)
    html = row_html(widget, "working ")
    assert "■ stopped" in html and "could not stop" not in html
    assert "stop_error" not in answers(widget)[0]
    assert GateAgent.runs and not gate.is_set()  # stopped while it still waited
