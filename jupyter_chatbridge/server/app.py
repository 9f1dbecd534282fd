"""`ChatBridgeApp`: the jupyter-server extension, its configuration and wiring."""

from __future__ import annotations

import gc
import hashlib
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jupyter_core.paths import jupyter_data_dir
from jupyter_server.extension.application import ExtensionApp
from traitlets import Bool, Float, Type, Unicode, default
from traitlets.config import Configurable

from ..client.discovery import ENV_TOKEN, ENV_URL
from ..clock import LoopScheduler
from ..protocol import ErrorCode
from .agents import Agent, EchoAgent
from .bridge import ChatBridge
from .errors import BridgeError
from .handlers import default_handlers
from .handlers.base import UNAVAILABLE_SETTING
from .handlers.events import FlushBatcher, Heartbeat, heartbeat_warning
from .limits import limit_traits, limits_from
from .metrics import NO_METRICS, BridgeMetrics
from .store import MEMORY, StoreError, StoreLocked, open_store
from .store.redis import RedisStore

if TYPE_CHECKING:
    _LimitTraits = Configurable
else:
    # One configurable traitlet per field of BridgeLimits (the one list of tunables).
    _LimitTraits = type("BridgeLimitTraits", (Configurable,), limit_traits())


def default_store_path(root_dir: str) -> Path:
    """The store of a server started in `root_dir`: one per folder, in the data dir.

    `<jupyter data dir>/chatbridge/servers/<folder name>-<hash of its resolved path>/`
    holds it, so two servers in two folders keep their own sessions, and a server
    started again in the same folder finds its sessions again.
    """
    resolved = str(Path(root_dir).expanduser().resolve())
    digest = hashlib.sha256(resolved.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(resolved).name)[:40] or "root"
    return (
        Path(jupyter_data_dir())
        / "chatbridge"
        / "servers"
        / f"{name}-{digest}"
        / "sessions.sqlite3"
    )


class ChatBridgeApp(ExtensionApp, _LimitTraits):
    """Chat and agent sessions over resumable streams, for notebooks, Lab and scripts."""

    name = "jupyter_chatbridge"
    load_other_extensions = True

    # inactive_ttl, replay_buffer_size, max_*: generated from BridgeLimits (limits.py).
    heartbeat_interval = Float(
        15.0,
        help="Seconds between keep-alive pings on idle event streams (0 disables). Clients "
        "take a stream silent for 45 s as dead and reconnect, so keep it below that.",
    ).tag(config=True)
    store_path = Unicode(
        help="The SQLite file that keeps sessions, their events (up to max_session_events), "
        "send receipts and settings across server restarts. Default: one file per server "
        "root folder, <jupyter data dir>/chatbridge/servers/<folder>-<hash>/sessions.sqlite3. "
        f'"{MEMORY}" keeps everything in memory only (lost on restart). '
        "To start over, stop the server and delete the file (and its -wal/-shm companions).",
    ).tag(config=True)
    store_url = Unicode(
        "",
        help='A Redis URL ("redis://host:port/db", needs jupyter_chatbridge[redis]): keep '
        "sessions, their events, send receipts and settings in that Redis, shared by every "
        "server process configured with it (see the README, Deployment with Redis). "
        "When set, store_path is not used.",
    ).tag(config=True)
    freeze_gc_after_start = Bool(
        True,
        help="Call gc.freeze() once the server has started, so that full garbage "
        "collections skip the (long-lived) objects of start-up. This shortens the pauses "
        "that delay event delivery under load; it affects the whole server process.",
    ).tag(config=True)
    metrics_enabled = Bool(
        True,
        help="Record Prometheus metrics (chatbridge_*) for jupyter_server's /metrics. "
        "Off, nothing is recorded and this server's state is left out of the gauges.",
    ).tag(config=True)
    agent_class = Type(
        default_value=EchoAgent,
        klass=Agent,
        help="The agent that answers user messages; one instance per session.",
    ).tag(config=True)

    bridge: ChatBridge

    @default("store_path")
    def _default_store_path(self) -> str:
        assert self.serverapp is not None  # set before any configuration is read
        return str(default_store_path(self.serverapp.root_dir))

    @default("static_paths")
    def _default_static_paths(self) -> list[str]:
        # The browser page's JS and CSS, served at {base_url}static/jupyter_chatbridge/.
        return [str(Path(__file__).parent.parent / "ui" / "static")]

    def initialize_settings(self) -> None:
        """Build the bridge from the configuration and share it with the handlers."""
        self.settings["chatbridge_flusher"] = FlushBatcher()
        try:
            # A store that cannot be read or written stops the extension from loading
            # (jupyter_server logs why): it must never start empty over existing data.
            metrics = BridgeMetrics() if self.metrics_enabled else NO_METRICS
            store = open_store(
                self.store_path,
                self.store_url,
                max_events=limits_from(self).max_session_events,
                metrics=metrics,
            )
        except StoreLocked as exc:
            # Another live server holds it: load anyway, so every endpoint says so (503).
            self.log.error("%s", exc)
            self.settings[UNAVAILABLE_SETTING] = BridgeError(503, ErrorCode.BUSY, str(exc))
            return
        except StoreError as exc:
            self.log.error("%s", exc)
            raise
        limits = limits_from(self)
        bridge = ChatBridge(
            limits,
            LoopScheduler(),
            self._make_agent,
            log=self.log,
            store=store,
            metrics=metrics,
            validate_settings=self.agent_class.validate_settings,
        )
        try:
            restored = bridge.restore()
        except Exception as exc:
            metrics.untrack(bridge)
            store.close()  # releases the file for the next attempt
            if isinstance(exc, StoreError):
                self.log.error("%s", exc)
            raise
        self.bridge = bridge
        self.log.info(
            "chatbridge: sessions are kept in %s (%d restored)", store.description, restored
        )
        if bridge.relay is not None:
            # A session's lease in Redis names its holder by this token: which process runs it.
            self.log.info("chatbridge: this process takes Redis leases as %s", bridge.relay.token)
        # Messages accepted before a restart are answered once the loop runs (in-process
        # servers, as the tests run them, never call the start hook below).
        assert self.serverapp is not None
        self.serverapp.io_loop.add_callback(bridge.start_restored_runs)
        self.heartbeat = Heartbeat(self.bridge, self.heartbeat_interval)
        warning = heartbeat_warning(self.heartbeat_interval)
        if warning is not None:
            self.log.warning("%s", warning)
        self.settings.update({"chatbridge": self.bridge, "chatbridge_heartbeat": self.heartbeat})

    def initialize_handlers(self) -> None:
        """Register the REST, stream and socket handlers under base_url."""
        self.handlers.extend(default_handlers())

    async def _start_jupyter_server_extension(self, serverapp: Any) -> None:
        """Once the server is bound, tell the kernels it starts where it is.

        Kernels inherit the server's environment; `client.discovery` reads these.
        The token is exported but never logged.
        """
        if not hasattr(self, "bridge"):
            return  # no store (see the log): nothing to start, nothing to find
        if self.freeze_gc_after_start:
            # Everything jupyter_server built at start-up lives as long as the process;
            # without this every full collection walks it again (~200 ms pauses under load).
            gc.freeze()
        exported = {ENV_URL: serverapp.connection_url}
        token = getattr(serverapp.identity_provider, "token", "")
        if token:
            exported[ENV_TOKEN] = token
        self._saved_environ = {name: os.environ.get(name) for name in (ENV_URL, ENV_TOKEN)}
        os.environ.update(exported)
        self.log.info("chatbridge: kernels will find this server at %s", serverapp.connection_url)

    async def stop_extension(self) -> None:
        """Stop agent runs, end every stream and close the store when the server stops."""
        if not hasattr(self, "bridge"):
            return  # never loaded
        self.heartbeat.stop()
        await self.bridge.shutdown()
        store = self.bridge.store
        if isinstance(store, RedisStore):
            await store.aclose()  # its event-loop connections too
        else:
            store.close()
        # Leave the process environment as we found it (several servers may share a process).
        for name, value in getattr(self, "_saved_environ", {}).items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    def _make_agent(self, session_id: str, settings: dict[str, Any]) -> Agent:
        agent: Agent = self.agent_class(
            parent=self, session_id=session_id, settings=dict(settings), log=self.log
        )
        return agent
