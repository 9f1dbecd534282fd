"""A real `jupyter server` in a subprocess, for tests that must kill and restart it."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import IO, Any

from tornado.httpclient import AsyncHTTPClient


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """Starts, kills and restarts a server on a fixed loopback port and token."""

    def __init__(self, root: Path, *args: str, data_dir: Path | None = None) -> None:
        self.root = root
        # Jupyter's data dir (the default session store lives there): the test's own
        # unless given, so that servers sharing one stand for one user's servers.
        self.data_dir = data_dir if data_dir is not None else root / "data"
        self.port = free_port()
        self.token = uuid.uuid4().hex
        self.url = f"http://127.0.0.1:{self.port}/"
        self.args = list(args)
        self.process: subprocess.Popen[bytes] | None = None
        self.log = root / "server.log"
        self._log_file: IO[Any] | None = None

    async def start(self, timeout: float = 30, ready: str = "chatbridge/api/sessions") -> None:
        """Start the server and wait until `ready` (a path under the server) answers 200."""
        env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(self.root / "runtime")}
        env["JUPYTER_DATA_DIR"] = str(self.data_dir)
        env.pop("JUPYTER_CHATBRIDGE_URL", None)
        self._log_file = self.log.open("ab")
        command = [
            sys.executable,
            "-m",
            "jupyter_server",
            "--no-browser",
            "--allow-root",
            f"--port={self.port}",
            "--ServerApp.port_retries=0",
            "--ip=127.0.0.1",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root}",
            *self.args,
        ]
        self.process = subprocess.Popen(
            command, stdout=self._log_file, stderr=subprocess.STDOUT, env=env, cwd=self.root
        )
        client = AsyncHTTPClient()
        deadline = asyncio.get_running_loop().time() + timeout
        while True:  # poll until it answers: a process starting, not a timer under test
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-2000:]}")
            try:
                response = await client.fetch(
                    f"{self.url}{ready}",
                    headers={"Authorization": f"token {self.token}"},
                    raise_error=False,
                )
                if response.code == 200:
                    return
            except OSError:
                pass  # not listening yet
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"server did not start: {self.log.read_text()[-2000:]}")
            await asyncio.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, like a crash or an OOM kill."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM: a clean shutdown, with the extension's stop hook (the store closes)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise
        self.kill()  # closes the log
