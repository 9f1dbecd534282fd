"""The page's ES modules reach the browser each under the version of its own content.

`static_url` versions the entry module's URL, but relative imports between modules carry
no version: without the page's import map a changed module could come from the browser's
cache beside a fresh entry. This loads the page in Chromium and checks every module the
static directory holds (the vendored libraries below it included) was fetched once, with
`?v=` equal to the hash of that file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from tornado.web import StaticFileHandler

import jupyter_chatbridge.ui

from .conftest import Browser

expect = pytest.importorskip("playwright.async_api").expect

STATIC = Path(jupyter_chatbridge.ui.__file__).parent / "static"


async def test_every_module_is_requested_with_its_own_version(browser: Browser) -> None:
    prefix = f"{browser.base_url}static/jupyter_chatbridge/"
    requested: list[tuple[str, list[str]]] = []

    def record(request: Any) -> None:
        url = urlsplit(request.url)
        if url.path.startswith(prefix) and url.path.endswith(".js"):
            requested.append((url.path[len(prefix) :], parse_qs(url.query).get("v", [])))

    browser.context.on("request", record)
    page = await browser.open()
    # Connected means every module loaded and ran: the page made its stream.
    await expect(page.locator("#conn-status")).to_have_attribute("data-state", "connected")

    modules = sorted(p.relative_to(STATIC).as_posix() for p in STATIC.rglob("*.js"))
    assert len(modules) >= 8  # the entry and the modules it imports
    # The vendored Markdown libraries too (imported by markdown.js).
    assert {"vendor/marked/marked.esm.js", "vendor/dompurify/purify.es.js"} <= set(modules)
    assert sorted(name for name, _ in requested) == modules  # each one, and once
    for name, versions in requested:
        expected = StaticFileHandler.get_content_version(str(STATIC / name))
        assert versions == [expected], f"{name} was requested with v={versions}"
