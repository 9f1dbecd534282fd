"""SIGKILL during a fast streamed answer: what the widget and the page DISPLAY stays true.

tests/test_crash.py's scenario for the other two clients: a real `jupyter server`
process runs `EchoAgent` at 10 ms and 50 ms chunk delays with every store default,
and is killed at a seeded random point of an answer, then started again on the
same store. After each restart:

- what the client displays (the widget's view, the page's DOM in headless
  Chromium) equals the conversation rebuilt from the server's history;
- the cut answer is shown as interrupted ("interrupted by a server restart");
- a new message round-trips, and the display still equals the history.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient

from jupyter_chatbridge import ChatWidget

from .chromium import chromium, page_url
from .displayed import (
    PAGE_ROWS_JS,
    Row,
    as_page_shows,
    expected_display,
    page_display,
    server_history,
    widget_display,
)
from .server_process import ServerProcess
from .support import eventually
from .widget_support import ThreadedClock

# (seconds between chunks, words in each answer, kills): 20 kills per client in all
RATES = [(0.01, 60, 10), (0.05, 24, 10)]


# The last quarter of an answer is never a kill point: a client's read of the display
# (a page evaluate, a widget summary) can take longer than the few chunks left, and
# a kill after the answer ended would cut nothing.
def kill_point(rng: random.Random, words: int) -> int:
    return rng.randint(1, words - words // 4)


SETTLE = 30.0  # seconds for a restarted server and its client to converge (busy machine)
INTERRUPTED = "interrupted by a server restart"


async def create_session(server: ServerProcess, session_id: str) -> None:
    response = await AsyncHTTPClient().fetch(
        f"{server.url}chatbridge/api/sessions",
        method="POST",
        body=json.dumps({"sessionId": session_id}),
        headers={"Authorization": f"token {server.token}"},
    )
    assert response.code == 201


def words_shown(rows: list[Row], answers_before: int) -> int:
    """Words of the answer after the first `answers_before` ones ("Echo: w0 w1 …")."""
    answers = [text for role, text, _ in rows if role == "agent"]
    return answers[answers_before].count(" w") if len(answers) > answers_before else 0


def answers(rows: list[Row]) -> int:
    return sum(role == "agent" for role, _, _ in rows)


async def converged(
    server: ServerProcess,
    read: Callable[[], Any],
    shown_as: Callable[[list[Row]], list[Row]] = list,
) -> list[Row]:
    """Wait until what the client displays equals the server's history (as the client
    shows it: `shown_as`); returns it."""
    expected = shown_as(expected_display(await server_history(server, "crash")))
    shown: list[Row] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SETTLE
    while True:
        shown = await read()
        if shown == expected:
            return shown
        assert loop.time() < deadline, f"shown {shown[-4:]}\nhistory {expected[-4:]}"
        await asyncio.sleep(0.05)  # the client catching up over I/O


def assert_cut_answer_interrupted(rows: list[Row], index: int) -> None:
    agent = [row for row in rows if row[0] == "agent"][index]
    assert agent[2] == INTERRUPTED, agent


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("chunk_delay", "words", "kills"), RATES)
async def test_the_widget_displays_the_history_after_each_sigkill(
    server_factory: Callable[..., ServerProcess], chunk_delay: float, words: int, kills: int
) -> None:
    rng = random.Random(f"widget-crash-{chunk_delay}")
    server = server_factory(f"--EchoAgent.chunk_delay={chunk_delay}")
    await server.start()
    clock = ThreadedClock()  # the widget's backoff: advanced by hand, never slept through
    widget = ChatWidget("crash", server.url, server.token, client_options={"scheduler": clock})
    text = " ".join(f"w{i}" for i in range(words))

    async def read() -> list[Row]:
        return widget_display(widget.summary())

    try:
        await eventually(lambda: widget.summary()["status"] == "connected", SETTLE)
        for kill in range(kills):
            before = answers(await read())
            widget.send_message(text)
            point = kill_point(rng, words)
            await eventually(
                lambda before=before, point=point: (
                    words_shown(widget_display(widget.summary()), before) >= point
                )
            )
            server.kill()
            await eventually(lambda: widget.summary()["status"] != "connected")
            await server.start()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + SETTLE
            while widget.summary()["status"] != "connected":  # fire each backoff timer
                assert loop.time() < deadline, widget.summary()["status"]
                clock.advance(max(clock.waiting(), default=0))
                await asyncio.sleep(0.05)  # the reconnect's I/O
            shown = await converged(server, read)
            assert_cut_answer_interrupted(shown, before)
            widget.send_message(f"after {kill}")
            await eventually(
                lambda kill=kill: (
                    ("agent", f"Echo: after {kill}", None) in widget_display(widget.summary())
                ),
                SETTLE,
            )
            await converged(server, read)
        assert widget.summary()["banner"] is None
    finally:
        await asyncio.get_running_loop().run_in_executor(None, widget.close)


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("chunk_delay", "words", "kills"), RATES)
async def test_the_page_displays_the_history_after_each_sigkill(
    server_factory: Callable[..., ServerProcess],
    tmp_path: Path,
    chunk_delay: float,
    words: int,
    kills: int,
) -> None:
    rng = random.Random(f"page-crash-{chunk_delay}")
    server = server_factory(f"--EchoAgent.chunk_delay={chunk_delay}")
    await server.start()
    await create_session(server, "crash")
    text = " ".join(f"w{i}" for i in range(words))
    async with chromium(tmp_path / "profile") as context:
        page = await context.new_page()
        await page.goto(page_url(server, "crash"))

        async def read() -> list[Row]:
            return page_display(await page.evaluate(PAGE_ROWS_JS))

        async def status() -> str:
            return str(await page.locator("#conn-status").get_attribute("data-state"))

        await eventually_async(lambda: status(), "connected")
        for kill in range(kills):
            before = answers(await read())
            await page.evaluate("(text) => window.chatbridge.send(text)", text)
            point = kill_point(rng, words)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + SETTLE
            while words_shown(await read(), before) < point:
                assert loop.time() < deadline
                await asyncio.sleep(0.005)
            server.kill()
            await server.start()
            shown = await converged(server, read, as_page_shows)
            assert_cut_answer_interrupted(shown, before)
            await eventually_async(lambda: status(), "connected")
            await page.evaluate("(text) => window.chatbridge.send(text)", f"after {kill}")
            loop = asyncio.get_running_loop()
            deadline = loop.time() + SETTLE
            while ("agent", f"Echo: after {kill}", None) not in await read():
                assert loop.time() < deadline, (await read())[-3:]
                await asyncio.sleep(0.05)
            await converged(server, read, as_page_shows)


async def eventually_async(read: Callable[[], Any], wanted: Any) -> None:
    """Until `await read()` equals `wanted`: the page reconnecting over I/O."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SETTLE
    while (got := await read()) != wanted:
        assert loop.time() < deadline, got
        await asyncio.sleep(0.05)
