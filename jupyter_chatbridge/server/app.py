"""`ChatBridgeApp`: the jupyter-server extension, its configuration and wiring."""

from __future__ import annotations

import gc
import os
from pathlib import Path
from typing import Any

from jupyter_core.paths import jupyter_data_dir
from jupyter_server.extension.application import ExtensionApp
from traitlets import Bool, Float, Int, Type, Unicode, default

from ..client.discovery import ENV_TOKEN, ENV_URL
from ..clock import LoopScheduler
from .agents import Agent, EchoAgent
from .bridge import BridgeLimits, ChatBridge
from .handlers import default_handlers
from .handlers.events import FlushBatcher, Heartbeat
from .store import MEMORY, StoreError, open_store


class ChatBridgeApp(ExtensionApp):
    """Chat and agent sessions over resumable streams, for notebooks, Lab and scripts."""

    name = "jupyter_chatbridge"
    load_other_extensions = True

    inactive_ttl = Float(
        60.0,
        help="Seconds a stable connection's state is kept after its stream closes, "
        "waiting for the client to reconnect.",
    ).tag(config=True)
    heartbeat_interval = Float(
        15.0, help="Seconds between keep-alive comments on idle event streams (0 disables)."
    ).tag(config=True)
    replay_buffer_size = Int(1000, help="Frames kept per connection for Last-Event-ID resume.").tag(
        config=True
    )
    max_message_bytes = Int(65536, help="Largest accepted message text, in UTF-8 bytes.").tag(
        config=True
    )
    max_pending_inputs = Int(
        100, help="Messages a session may hold waiting for the agent before sends get 429."
    ).tag(config=True)
    max_session_events = Int(
        10000, help="Events kept per session; the oldest are trimmed from history."
    ).tag(config=True)
    max_receipts_per_session = Int(
        10000, help="Send receipts kept per session for clientMsgId dedup."
    ).tag(config=True)
    max_sessions = Int(1000, help="Sessions the server holds at once.").tag(config=True)
    max_watches_per_connection = Int(100, help="Sessions one connection may watch.").tag(
        config=True
    )
    max_connections_per_user = Int(
        200, help="Connections (open or waiting for reconnect) one user may hold."
    ).tag(config=True)
    max_stream_buffer_bytes = Int(
        1 << 20,
        help="Unsent bytes an event stream may queue for a client that stopped reading; "
        "past this the stream is dropped (the client resumes with Last-Event-ID).",
    ).tag(config=True)
    store_path = Unicode(
        help="The SQLite file that keeps sessions, their events (up to max_session_events), "
        "send receipts and settings across server restarts. Default: "
        "<jupyter data dir>/chatbridge/sessions.sqlite3. "
        f'"{MEMORY}" keeps everything in memory only (lost on restart). '
        "To start over, stop the server and delete the file (and its -wal/-shm companions).",
    ).tag(config=True)
    freeze_gc_after_start = Bool(
        True,
        help="Call gc.freeze() once the server has started, so that full garbage "
        "collections skip the (long-lived) objects of start-up. This shortens the pauses "
        "that delay event delivery under load; it affects the whole server process.",
    ).tag(config=True)
    agent_class = Type(
        default_value=EchoAgent,
        klass=Agent,
        help="The agent that answers user messages; one instance per session.",
    ).tag(config=True)

    bridge: ChatBridge

    @default("store_path")
    def _default_store_path(self) -> str:
        return str(Path(jupyter_data_dir()) / "chatbridge" / "sessions.sqlite3")

    @default("static_paths")
    def _default_static_paths(self) -> list[str]:
        # The browser page's JS and CSS, served at {base_url}static/jupyter_chatbridge/.
        return [str(Path(__file__).parent.parent / "ui" / "static")]

    def initialize_settings(self) -> None:
        """Build the bridge from the configuration and share it with the handlers."""
        limits = BridgeLimits(
            inactive_ttl=self.inactive_ttl,
            replay_buffer_size=self.replay_buffer_size,
            max_message_bytes=self.max_message_bytes,
            max_pending_inputs=self.max_pending_inputs,
            max_session_events=self.max_session_events,
            max_receipts_per_session=self.max_receipts_per_session,
            max_sessions=self.max_sessions,
            max_watches_per_connection=self.max_watches_per_connection,
            max_connections_per_user=self.max_connections_per_user,
            max_stream_buffer_bytes=self.max_stream_buffer_bytes,
        )
        try:
            # A store that cannot be read or written stops the extension from loading
            # (jupyter_server logs why): it must never start empty over existing data.
            store = open_store(self.store_path)
        except StoreError as exc:
            self.log.error("%s", exc)
            raise
        bridge = ChatBridge(limits, LoopScheduler(), self._make_agent, log=self.log, store=store)
        try:
            restored = bridge.restore()
        except Exception as exc:
            store.close()  # releases the file for the next attempt
            if isinstance(exc, StoreError):
                self.log.error("%s", exc)
            raise
        self.bridge = bridge
        self.log.info(
            "chatbridge: sessions are kept in %s (%d restored)", store.description, restored
        )
        self.heartbeat = Heartbeat(self.bridge, self.heartbeat_interval)
        self.settings.update(
            {
                "chatbridge": self.bridge,
                "chatbridge_flusher": FlushBatcher(),
                "chatbridge_heartbeat": self.heartbeat,
            }
        )

    def initialize_handlers(self) -> None:
        """Register the REST, stream and socket handlers under base_url."""
        self.handlers.extend(default_handlers())

    async def _start_jupyter_server_extension(self, serverapp: Any) -> None:
        """Once the server is bound, tell the kernels it starts where it is.

        Kernels inherit the server's environment; `client.discovery` reads these.
        The token is exported but never logged. Restored sessions with messages
        accepted before a restart start answering them now that the loop runs.
        """
        if not hasattr(self, "bridge"):
            return  # the extension failed to load (see the log); nothing to start
        self.bridge.resume_restored_runs()
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
        self.bridge.store.close()
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
