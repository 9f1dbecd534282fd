"""Server subprocesses: chatbridge under jupyter_server, the raw Tornado floor, python-socketio.

Every process started here is registered and killed by `stop_all()` (called in
a `finally` and from `atexit`), SIGTERM first, SIGKILL after a grace period.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .client import HTTPConn
from .common import BASE_URL, HOST, TOKEN

REPO = Path(__file__).resolve().parent.parent

# The chatbridge settings every bench server runs with; a scenario may add more.
OURS_CONFIG: dict[str, object] = {
    "agent_class": "bench.agents.BurstAgent",
    # Realistic keep-alive; no measured run is idle that long, so pings never skew a figure.
    "heartbeat_interval": 15,
    # Fan-out and memory runs open up to 2000 streams per run, and stable
    # connections linger inactive for inactive_ttl after their stream closes.
    "max_connections_per_user": 100000,
    "max_sessions": 100000,
    "max_pending_inputs": 10000,
    "max_session_events": 10000,
    "replay_buffer_size": 1000,
    # No store_path: ours runs on its default store, as users do: SQLite, one file per
    # server root folder, <jupyter data dir>/chatbridge/servers/<folder>-<hash>/
    # sessions.sqlite3, where the data dir is the server's own fresh temporary
    # JUPYTER_DATA_DIR (checked at start, see ServerProcess.check_store). A scenario may
    # pass store_path (the store scenario's ":memory:" side), and so may --ours-config
    # for a what-if run.
}

# The default store, in words (relative to the server's JUPYTER_DATA_DIR).
DEFAULT_STORE_TEXT = "<JUPYTER_DATA_DIR>/chatbridge/servers/<folder>-<hash>/sessions.sqlite3"


def default_store_file(data_dir: Path, root_dir: Path) -> Path:
    """Where a chatbridge server with this data dir and root folder keeps its default
    store: asked from the server's own code (`default_store_path`), not spelled out
    here, so the check follows wherever the default moves."""
    from jupyter_chatbridge.server.app import default_store_path

    saved = os.environ.get("JUPYTER_DATA_DIR")
    os.environ["JUPYTER_DATA_DIR"] = str(data_dir)  # what the server process sees
    try:
        return default_store_path(str(root_dir))
    finally:
        if saved is None:
            del os.environ["JUPYTER_DATA_DIR"]
        else:
            os.environ["JUPYTER_DATA_DIR"] = saved


def store_text(config: dict[str, object] | None = None) -> str:
    """Which session store a chatbridge server with this config runs on, in words."""
    path = (OURS_CONFIG if config is None else config).get("store_path")
    if path is None:
        return (
            "the default SQLite store: sessions.sqlite3 in a fresh temporary "
            f"JUPYTER_DATA_DIR per server process ({DEFAULT_STORE_TEXT})"
        )
    if path == ":memory:":
        return "store_path=:memory: (the in-memory store, nothing on disk)"
    return f"a SQLite store at store_path={path}"


_RUNNING: list[ServerProcess] = []


def apply_ours_overrides(pairs: list[str]) -> dict[str, object]:
    """`KEY=VALUE` pairs from the command line, merged into every chatbridge server's config
    (what-if runs, e.g. ``store_path=:memory:``). Returns what was applied."""
    applied: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--ours-config wants KEY=VALUE, got {pair!r}")
        applied[key.strip()] = value
    OURS_CONFIG.update(applied)
    return applied


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """One server under test, in its own process (and process group)."""

    def __init__(self, kind: str, extra_config: dict[str, object] | None = None) -> None:
        self.kind = kind
        self.port = free_port()
        # A None value in extra_config drops the key (back to the trait's default).
        merged = {**OURS_CONFIG, **(extra_config or {})}
        self.config = {k: v for k, v in merged.items() if v is not None}
        self.proc: subprocess.Popen[bytes] | None = None
        self.tmp = Path(tempfile.mkdtemp(prefix=f"bench-{kind}-"))
        self.log_path = self.tmp / "server.log"
        self.data_dir = self.tmp / "data"  # the server's JUPYTER_DATA_DIR
        self.store_file: Path | None = None  # ours' default SQLite file, once checked

    @property
    def base(self) -> str:
        """Path prefix of the protocol's endpoints."""
        return BASE_URL if self.kind == "ours" else "/"

    def command(self) -> list[str]:
        if self.kind == "floor":
            return [sys.executable, "-m", "bench.floor_server", "--port", str(self.port)]
        if self.kind == "socketio":
            return [sys.executable, "-m", "bench.sio_server", "--port", str(self.port)]
        args = [
            sys.executable,
            "-m",
            "jupyter_server",
            "--allow-root",
            "--no-browser",
            f"--port={self.port}",
            "--ServerApp.port_retries=0",
            f"--ServerApp.ip={HOST}",
            f"--IdentityProvider.token={TOKEN}",
            f"--ServerApp.base_url={BASE_URL}",
            f"--ServerApp.root_dir={self.tmp}",
            "--ServerApp.jpserver_extensions={'jupyter_chatbridge': True}",
            # Request logging would measure the logger, not the server.
            "--log-level=WARN",
        ]
        args += [f"--ChatBridgeApp.{k}={v}" for k, v in self.config.items()]
        return args

    async def start(self, timeout: float = 60.0) -> ServerProcess:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])]
        )
        # Jupyter's per-user dirs all point into this server's temporary directory: its
        # store, runtime files and cookie secret never touch ~/.local/share/jupyter, and
        # no ~/.jupyter config (a store_path, say) changes what is measured.
        env["JUPYTER_RUNTIME_DIR"] = str(self.tmp / "runtime")
        env["JUPYTER_DATA_DIR"] = str(self.data_dir)
        env["JUPYTER_CONFIG_DIR"] = str(self.tmp / "config")
        env["PYTHONUNBUFFERED"] = "1"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.command(),
                cwd=str(self.tmp),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_raise_nofile,
            )
        _RUNNING.append(self)
        deadline = time.monotonic() + timeout
        path = f"{BASE_URL}api/status" if self.kind == "ours" else "/ping"
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} server exited at start:\n{self.log_tail()}")
            try:
                conn = HTTPConn(self.port, self.auth_headers())
                status, _ = await conn.request("GET", path, timeout=2)
                conn.close()
                if status == 200:
                    self.check_store()
                    return self
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.kind} server did not start:\n{self.log_tail()}")
            await asyncio.sleep(0.1)

    def check_store(self) -> None:
        """On the default store, the SQLite file must be in this server's temporary data
        dir: the bench never writes to the user's real ~/.local/share/jupyter."""
        if self.kind != "ours" or "store_path" in self.config:
            return
        expected = default_store_file(self.data_dir, self.tmp)  # the root dir is self.tmp
        if not expected.is_file():
            found = sorted(str(p) for p in self.data_dir.rglob("*.sqlite3"))
            raise RuntimeError(
                f"ours started, but its store is not {expected} (SQLite files in its "
                f"data dir: {found or 'none'}): is JUPYTER_DATA_DIR ignored?\n{self.log_tail()}"
            )
        self.store_file = expected

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"token {TOKEN}"} if self.kind == "ours" else {}

    def rss_bytes(self) -> int:
        """Resident set size of the server process now."""
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def cpu_seconds(self) -> float:
        """User + system CPU time the server process has used so far."""
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        if self in _RUNNING:
            _RUNNING.remove(self)
        shutil.rmtree(self.tmp, ignore_errors=True)


def _raise_nofile() -> None:
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def stop_all() -> None:
    for server in list(_RUNNING):
        server.stop()


atexit.register(stop_all)


class ServerPool:
    """Long-lived servers shared by the scenarios that don't need a fresh process."""

    def __init__(self) -> None:
        self._servers: dict[tuple[str, str], ServerProcess] = {}

    async def get(self, kind: str, extra: dict[str, object] | None = None) -> ServerProcess:
        key = (kind, repr(sorted((extra or {}).items())))
        server = self._servers.get(key)
        if server is None or server.proc is None or server.proc.poll() is not None:
            server = await ServerProcess(kind, extra).start()
            self._servers[key] = server
        return server

    def stop(self) -> None:
        for server in self._servers.values():
            server.stop()
        self._servers.clear()
