"""The panel's input: Enter sends the text that belongs to it, however late that text comes.

The kernel's loop is replaced by a manual one, so the settle checks run when the test
says, not after real time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from jupyter_chatbridge.ui.panel import SUBMIT_SETTLE, SUBMIT_WAIT, ChatPanel


class ManualLoop:
    """The kernel loop's `time` and `call_later`, moved by hand."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[tuple[float, Callable[..., Any], tuple[Any, ...]]] = []

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> None:
        self.timers.append((self.now + delay, callback, args))

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while due := sorted((t for t in self.timers if t[0] <= end), key=lambda t: t[0]):
            timer = due[0]
            self.timers.remove(timer)
            self.now = timer[0]
            timer[1](*timer[2])
        self.now = end


@pytest.fixture
def loop(monkeypatch: pytest.MonkeyPatch) -> ManualLoop:
    manual = ManualLoop()
    monkeypatch.setattr(asyncio, "get_running_loop", lambda: manual)
    return manual


@pytest.fixture
def sent() -> list[str]:
    return []


@pytest.fixture
def chat_panel(sent: list[str]) -> Iterator[ChatPanel]:
    def take(text: str) -> bool:
        sent.append(text)
        return True

    panel = ChatPanel(
        height="360px",
        max_messages=100,
        on_text=take,
        on_retry=lambda _: None,
        on_banner_action=lambda: None,
        on_status_action=lambda: None,
    )
    yield panel
    panel.close()


def enter(panel: ChatPanel) -> None:
    panel._input_message(panel.input, {"event": "submit"}, [])


def test_enter_waits_for_a_text_that_trails_by_more_than_one_settle(
    chat_panel: ChatPanel, loop: ManualLoop, sent: list[str]
) -> None:
    enter(chat_panel)
    loop.advance(SUBMIT_SETTLE * 3)  # the text's update is held back for a while
    assert sent == []
    chat_panel.input.value = "Question 9: please answer in 15 lines."
    assert sent == ["Question 9: please answer in 15 lines."]
    assert chat_panel.input.value == ""


def test_a_text_committed_before_enter_is_sent_at_the_first_settle(
    chat_panel: ChatPanel, loop: ManualLoop, sent: list[str]
) -> None:
    chat_panel.input.value = "committed by a blur"
    enter(chat_panel)
    assert sent == []  # a newer text may still be on its way
    loop.advance(SUBMIT_SETTLE)
    assert sent == ["committed by a blur"]


def test_enter_on_an_empty_input_sends_nothing_then_or_later(
    chat_panel: ChatPanel, loop: ManualLoop, sent: list[str]
) -> None:
    enter(chat_panel)
    loop.advance(SUBMIT_WAIT + SUBMIT_SETTLE)
    assert not loop.timers  # it stopped waiting
    chat_panel.input.value = "typed and blurred later, no Enter"
    assert sent == []
