"""A real `jupyter lab` in a subprocess and the headless Chromium that drives it.

Shared by the browser tests (tests/browser: Chromium only) and the notebook-panel
tests (tests/lab: JupyterLab and Chromium). It imports neither JupyterLab nor playwright:
the lab runs as a subprocess and playwright is imported by whoever launches Chromium.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any, Final

# Debian's Chromium; never `playwright install`.
CHROMIUM: Final = Path("/usr/bin/chromium")
CHROMIUM_ARGS: Final = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# JupyterLab settings for a quiet page: no news prompt, no update checks.
LAB_SETTINGS: Final = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}
# `make test` sets this: there a missing browser is a failure, not a skip.
REQUIRE_BROWSER: Final = os.environ.get("CHATBRIDGE_REQUIRE_BROWSER") == "1"
KERNELSPEC: Final = {"display_name": "Python 3", "language": "python", "name": "python3"}


def browser_missing(*, lab: bool = False) -> str | None:
    """Why the browser tests (with `lab`: the JupyterLab ones) cannot run here, or None."""
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} is missing: `apt-get install -y chromium` (make test does it)"
    for package in ("playwright", *(["jupyterlab"] if lab else [])):
        if importlib.util.find_spec(package) is None:
            return f"the Python package {package} is missing: pip install -e '.[test]'"
    return None


def copy_to_docs(screenshot: Path, target: Path) -> None:
    """With `CHATBRIDGE_UPDATE_DOCS=1`, a test's screenshot becomes the README's picture."""
    if os.environ.get("CHATBRIDGE_UPDATE_DOCS") == "1":
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(screenshot, target)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_notebook(path: Path, *cells: str) -> None:
    """A notebook of code cells, never run (no outputs)."""
    notebook = {
        "cells": [
            {
                "cell_type": "code",
                "execution_count": None,
                "id": f"cell{index}",
                "metadata": {},
                "outputs": [],
                "source": source,
            }
            for index, source in enumerate(cells)
        ],
        "metadata": {"kernelspec": KERNELSPEC},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(notebook))


class LabServer:
    """`jupyter lab` on a free loopback port, its own token, settings and data dir.

    The sessions it keeps start empty and die with `root`. `args` are extra command-line
    options (e.g. `--EchoAgent.chunk_delay=0.01`).
    """

    def __init__(self, root: Path, *args: str) -> None:
        self.root = root
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}/"
        self.args = list(args)
        self.log = root / "lab.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    def start(self, timeout: float = 90.0) -> None:
        settings = self.root / ".settings"
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
            f"--port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root}",
            *self.args,
        ]
        if os.geteuid() == 0:
            command.append("--allow-root")
        env = {
            **os.environ,
            "JUPYTERLAB_SETTINGS_DIR": str(settings),
            "JUPYTERLAB_WORKSPACES_DIR": str(self.root / ".workspaces"),
            "JUPYTER_DATA_DIR": str(self.root / ".data"),
            "JUPYTER_RUNTIME_DIR": str(self.root / ".runtime"),
        }
        # Not the test server's: the kernels this lab starts must find this lab.
        env.pop("JUPYTER_CHATBRIDGE_URL", None)
        env.pop("JUPYTER_CHATBRIDGE_TOKEN", None)
        self._log_file = self.log.open("ab")
        self.process = subprocess.Popen(
            command, env=env, cwd=self.root, stdout=self._log_file, stderr=subprocess.STDOUT
        )
        self._wait_until_up(timeout)

    def _wait_until_up(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:  # poll a process starting up: not a timer under test
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"jupyter lab exited: {self.log_tail()}")
            try:
                self.api("GET", "chatbridge/api/sessions")
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"jupyter lab did not start: {self.log_tail()}") from None
                time.sleep(0.2)

    def log_tail(self, size: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-size:] if self.log.exists() else ""

    def api(self, method: str, path: str, body: Any = None) -> Any:
        """A REST call with the token; the decoded JSON answer (None if empty)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.url}{path}",
            data=data,
            method=method,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def session_driver(self, session_id: str) -> str | None:
        """The clientId of the connection driving a chat session."""
        driver = self.api("GET", f"chatbridge/api/sessions/{session_id}")["driver"]
        return str(driver) if driver else None

    def shutdown_kernels(self) -> None:
        """Shut down every kernel of this lab (they outlive closed pages otherwise)."""
        for kernel in self.api("GET", "api/kernels"):
            try:
                self.api("DELETE", f"api/kernels/{kernel['id']}")
            except urllib.error.HTTPError as exc:
                if exc.code != 404:
                    raise

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self._log_file is not None:
            self._log_file.close()
