"""Take the README's screenshot of ChatWidget in JupyterLab (docs/widget.png).

Not part of the test suite. It starts `jupyter lab` on a free loopback port
with the extension, opens in headless Debian Chromium a notebook whose cell is
the README's two lines, runs it, saves and reloads the page (and fails if the
reload changed the connection that drives the session), then sends a message
from the panel, runs a cell that keeps the kernel busy, and saves the picture
while the answer is streaming in. Re-run it after changing how the widget
looks::

    python3 -m venv /tmp/docs-venv
    /tmp/docs-venv/bin/pip install -e ".[docs]"    # jupyterlab and playwright
    /tmp/docs-venv/bin/python docs/screenshot_widget.py

(JupyterLab is kept out of the development venv on purpose: its server
extensions would load into every test server.) Playwright drives Debian's
`/usr/bin/chromium` (`apt-get install -y chromium`); never `playwright install`.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from playwright.async_api import async_playwright

from jupyter_chatbridge.client import ChatClient

OUT = Path(__file__).resolve().parent / "widget.png"
DEBUG = Path(tempfile.gettempdir()) / "chatbridge-widget-screenshot-failed.png"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CELL = 'from jupyter_chatbridge import ChatWidget\nChatWidget("demo")'
HISTORY = "What happens if I reload the page?"
MESSAGE = "Does the answer keep streaming in while a long cell keeps the kernel busy?"
BUSY_CELL = "import time\ntime.sleep(8)  # a long-running cell"
# JupyterLab settings for a clean picture: no news prompt, no kernel-status toasts.
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_notebook(root: Path) -> None:
    notebook = {
        "cells": [
            {
                "cell_type": "code",
                "execution_count": None,
                "id": "chat",
                "metadata": {},
                "outputs": [],
                "source": CELL,
            }
        ],
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    (root / "chat.ipynb").write_text(json.dumps(notebook))


def start_lab(root: Path, port: int, token: str) -> subprocess.Popen[bytes]:
    settings = root / ".settings"
    for name, values in LAB_SETTINGS.items():
        path = settings / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    command = [
        sys.executable,
        "-m",
        "jupyter",
        "lab",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--EchoAgent.chunk_delay=0.25",  # slow enough to catch the answer mid-stream
    ]
    if os.geteuid() == 0:
        command.append("--allow-root")
    # A data dir of its own: the sessions this server keeps start empty and die with it.
    env = {
        **os.environ,
        "JUPYTERLAB_SETTINGS_DIR": str(settings),
        "JUPYTER_DATA_DIR": str(root / ".data"),
    }
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


def wait_until_up(url: str, token: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}api/status?token={token}", timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def session_driver(url: str, token: str) -> str | None:
    """The clientId of the connection driving session "demo"."""
    request = urllib.request.Request(
        f"{url}chatbridge/api/sessions/demo", headers={"Authorization": f"token {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        driver = json.load(response)["driver"]
    return str(driver) if driver else None


async def shoot(url: str, token: str) -> None:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = await browser.new_page(viewport={"width": 1100, "height": 560})
        try:
            await drive(page, url, token)
        except BaseException:
            await page.screenshot(path=str(DEBUG))
            print(f"failed; the page as it was: {DEBUG}", file=sys.stderr)
            raise
        finally:
            await browser.close()


async def drive(page: Any, url: str, token: str) -> None:
    """Run the README's cell, check that a reload keeps the panel, then take the picture
    of an answer streaming in while another cell keeps the kernel busy."""
    await page.goto(f"{url}lab/tree/chat.ipynb?token={token}")
    await page.wait_for_selector(".jp-Notebook .jp-Cell .cm-content", timeout=60_000)
    # The kernel has started once the status bar says so.
    await page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=60_000)
    await page.locator(".jp-Notebook .jp-Cell .cm-content").first.click()
    await page.keyboard.press("Shift+Enter")  # run it; a new cell below
    field = page.locator(".widget-text input")
    await field.wait_for(timeout=60_000)
    await page.get_by_text("connected").first.wait_for(timeout=30_000)
    await page.get_by_text(f"Echo: {HISTORY}").wait_for(timeout=30_000)

    # A reload shows the same panel: it lives in the kernel, on the same connection.
    driver = session_driver(url, token)
    # Saved, the output (and so the panel) is in the notebook when it opens again.
    await page.click('[data-command="docmanager:save"]')
    await page.wait_for_selector(".lm-TabBar-tab.jp-mod-dirty", state="detached")
    await page.reload()
    await page.get_by_text(f"Echo: {HISTORY}").wait_for(timeout=60_000)
    await page.get_by_text("connected").first.wait_for(timeout=30_000)
    if session_driver(url, token) != driver:
        raise AssertionError("the reload changed the session's driver")
    open_panel = page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current")
    if await open_panel.count():
        await open_panel.click()  # fold the file browser away

    # Send from the panel, then at once run a cell that keeps the kernel busy.
    await field.click()
    await field.type(MESSAGE)
    await field.press("Enter")
    await page.get_by_text("✓ delivered").last.wait_for(timeout=30_000)
    await page.locator(".jp-Notebook .jp-Cell .cm-content").nth(1).click()
    await page.keyboard.type(BUSY_CELL)
    await page.keyboard.press("Control+Enter")
    await page.get_by_text("Python 3 (ipykernel) | Busy").wait_for(timeout=10_000)
    # Mid-answer: a few words in, still streaming, the kernel still busy.
    streaming = (
        "[...document.querySelectorAll('.widget-html-content')].some(e => "
        f"e.textContent.startsWith({json.dumps('Echo: ' + MESSAGE.split()[0])}) && "
        "e.textContent.includes('▍') && "
        f"e.textContent.split(' ').length > {len(MESSAGE.split()) // 2})"
    )
    await page.wait_for_function(streaming, timeout=30_000, polling=50)
    await page.mouse.click(900, 500)  # the text cursor out of the picture
    await page.screenshot(path=str(OUT))
    await page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=30_000)


def main() -> None:
    token = secrets.token_hex(16)
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_notebook(root)
        lab = start_lab(root, port, token)
        try:
            wait_until_up(url, token)
            # A conversation so far, which the panel shows when it joins the session.
            with ChatClient(url, token) as client:
                client.session("demo").ask(HISTORY)
            asyncio.run(shoot(url, token))
        finally:
            lab.terminate()
            lab.wait(30)
    print(f"saved {OUT}")


if __name__ == "__main__":
    main()
