"""Headless Chromium on the chat page of a server process (tests/server_process.py).

For tests that kill and restart the server, or run two: the browser lives in the test
(started on its loop), not in the in-process server's fixtures of tests/browser/.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from jupyter_chatbridge.testing.lab import (
    CHROMIUM,
    CHROMIUM_ARGS,
    REQUIRE_BROWSER,
    browser_missing,
)


def need_browser() -> None:
    missing = browser_missing()
    if missing is not None:
        if REQUIRE_BROWSER:
            pytest.fail(f"the browser tests cannot run: {missing}")
        pytest.skip(missing)


@contextlib.asynccontextmanager
async def chromium(profile: Path) -> AsyncIterator[Any]:
    """A persistent Chromium context (a fresh profile); every page error fails the test."""
    need_browser()
    from playwright.async_api import async_playwright, expect

    expect.set_options(timeout=20_000)
    problems: list[str] = []
    playwright = await async_playwright().start()
    try:
        context = await playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 960, "height": 640},
        )
        context.on(
            "page",
            lambda page: page.on("pageerror", lambda e: problems.append(f"page error: {e}")),
        )
        try:
            yield context
        finally:
            await context.close()
    finally:
        await playwright.stop()
    assert not problems, problems


def page_url(server: Any, session_id: str | None = None) -> str:
    """The chat page of a `ServerProcess`, logged in by the URL token, on `session_id`."""
    url = f"{server.url}chatbridge/?token={server.token}"
    return f"{url}#session={session_id}" if session_id else url
