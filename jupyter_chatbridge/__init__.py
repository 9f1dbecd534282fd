"""jupyter_chatbridge: dependable chat and agent sessions from Jupyter.

The package is laid out by who runs the code (see the README's Layout):
`protocol` (the wire contract and the client rules), `server` (the
jupyter-server extension, `ChatBridgeApp`), `client` (the Python client; it
imports nothing from jupyter_server) and `ui` (the notebook panel,
`ChatWidget`, and the browser page). Heavy names are loaded lazily so that
importing the client stays light.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "ChatBridgeApp",
    "ChatWidget",
    "EchoAgent",
    "OpenAIAgent",
    "Turn",
    "UserMessage",
    "__version__",
]


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from .server.app import ChatBridgeApp

    return [{"module": "jupyter_chatbridge.server.app", "app": ChatBridgeApp}]


def __getattr__(name: str) -> Any:
    if name == "ChatBridgeApp":
        from .server.app import ChatBridgeApp

        return ChatBridgeApp
    if name == "ChatWidget":
        from .ui.widget import ChatWidget

        return ChatWidget
    if name in {"Agent", "EchoAgent", "Turn", "UserMessage"}:
        from .server import agents

        return getattr(agents, name)
    if name == "OpenAIAgent":
        # Importable without the `openai` extra: making one says how to install it.
        from .server.openai_agent import OpenAIAgent

        return OpenAIAgent
    raise AttributeError(f"module 'jupyter_chatbridge' has no attribute {name!r}")
