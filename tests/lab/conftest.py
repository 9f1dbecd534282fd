"""Fixtures for the notebook-panel tests: a real `jupyter lab` driven in headless Chromium.

One lab server (a subprocess, with the extension and `LinesAgent`) and one Chromium serve
the whole module; each test opens its own notebook, so it gets its own kernel, panel and
session. Playwright's sync API drives the page: these tests are plain functions, with no
event loop of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from jupyter_chatbridge.testing.lab import (
    CHROMIUM,
    CHROMIUM_ARGS,
    REQUIRE_BROWSER,
    LabServer,
    browser_missing,
    write_notebook,
)

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "lab"
WIDGET_CELL = 'from jupyter_chatbridge import ChatWidget\nw = ChatWidget("{session}")\nw'
# A short delay: answers still stream in chunks, and ten of them take a few seconds.
LAB_ARGS = (
    "--ChatBridgeApp.agent_class=tests.agents.LinesAgent",
    "--EchoAgent.chunk_delay=0.005",
)
TIMEOUT = 30_000  # ms: a kernel start on a loaded machine


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the test, so a fixture can tell that its test failed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture(autouse=True)
def jp_asyncio_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """pytest-jupyter's loop fixture (autouse) would take and close the running loop of
    playwright's sync API; these tests need no loop of their own, so it gets a spare one."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(autouse=True)
def jp_server_cleanup() -> None:
    """pytest-jupyter's (autouse) cleanup of an in-process server: there is none here."""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabServer]:
    missing = browser_missing(lab=True)
    if missing is not None:
        if REQUIRE_BROWSER:
            pytest.fail(f"the JupyterLab tests cannot run: {missing}")
        pytest.skip(missing)
    server = LabServer(tmp_path_factory.mktemp("lab"), *LAB_ARGS)
    try:
        server.start()
        yield server
    finally:
        with contextlib.suppress(OSError):  # not up: nothing to shut down
            server.shutdown_kernels()
        server.stop()


@pytest.fixture(scope="module")
def chromium(lab: LabServer) -> Iterator[Any]:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Notebook:
    """One notebook open in JupyterLab, its first cell the panel on `session`."""

    lab: LabServer
    page: Any
    name: str
    session: str
    problems: list[str]

    @property
    def panel(self) -> Any:
        """The (first) chat panel on the page."""
        return self.page.locator(".chatbridge-panel").first

    @property
    def cells(self) -> Any:
        """The cells of this notebook (its tab is the one shown)."""
        return self.page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell")

    def open(self) -> None:
        # `reset`: a fresh workspace, not the tabs an earlier test left open.
        self.page.goto(f"{self.lab.url}lab/tree/{self.name}?reset&token={self.lab.token}")
        self.cells.first.locator(".cm-content").wait_for()
        self.wait_for_kernel("Idle")
        open_sidebar = self.page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current")
        if open_sidebar.count():
            open_sidebar.click()  # fold the file browser away: the notebook gets the width

    def wait_for_kernel(self, state: str) -> None:
        self.page.get_by_text(re.compile(rf"Python 3 \(ipykernel\) \| {state}")).wait_for()

    def cell_running(self, index: int) -> bool:
        """Whether a cell is running now, by its prompt ("[*]:"). (The status bar is no proof:
        ipykernel 7 reports idle after each widget message it handles while a cell runs.)"""
        prompt = self.cells.nth(index).locator(".jp-InputPrompt")
        return str(prompt.inner_text()).strip() == "[*]:"

    def run_cell(self, index: int) -> None:
        """Run one cell in place (Ctrl+Enter) and wait until the kernel takes it."""
        self.cells.nth(index).locator(".cm-content").click()
        self.page.keyboard.press("Control+Enter")

    def start_panel(self) -> None:
        self.run_cell(0)
        self.panel.get_by_text("connected", exact=True).wait_for()

    def send(self, text: str, panel: Any = None) -> None:
        """Type `text` into a panel's input and press Enter."""
        field = (panel or self.panel).locator(".chatbridge-input input")
        field.fill(text)
        field.press("Enter")

    def wait_delivered(self, count: int, panel: Any = None) -> None:
        """Until `count` messages of this panel say delivered and no answer is streaming."""
        from playwright.sync_api import expect

        root = panel or self.panel
        expect(root.locator(".chatbridge-delivery", has_text="✓ delivered")).to_have_count(count)
        expect(root.locator(".chatbridge-thinking")).to_be_hidden()

    def save(self) -> None:
        self.page.click('[data-command="docmanager:save"]')
        self.page.wait_for_selector(".lm-TabBar-tab.jp-mod-dirty", state="detached")

    def shot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path))
        return path


@pytest.fixture
def open_notebook(lab: LabServer, chromium: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """`open_notebook(*cells, session=None, width=1100, height=700)`: a new page on a new
    notebook whose first cell makes a panel on `session` (by default one of this test's
    own), the other cells after it. Console errors fail the test."""
    contexts: list[Any] = []
    problems: list[str] = []
    base = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40]

    def console(message: Any) -> None:
        if message.type == "error" and "Failed to load resource" not in message.text:
            problems.append(f"console error: {message.text}")

    def factory(
        *cells: str, session: str | None = None, width: int = 1100, height: int = 700
    ) -> Notebook:
        name = f"{base}-{len(contexts)}.ipynb"
        session = session or f"{base}-{len(contexts)}"
        write_notebook(lab.root / name, WIDGET_CELL.format(session=session), *cells)
        context = chromium.new_context(viewport={"width": width, "height": height})
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
        page.on("console", console)
        notebook = Notebook(lab, page, name, session, problems)
        notebook.open()
        return notebook

    yield factory
    call = getattr(request.node, "report_call", None)
    if call is not None and call.failed:  # the page as it was, for whoever reads the failure
        for index, context in enumerate(contexts):
            for number, page in enumerate(context.pages):
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / f"FAILED-{base}-{index}-{number}.png"))
    for context in contexts:
        context.close()
    lab.shutdown_kernels()
    assert not problems, problems
