"""jupyter_chatbridge: dependable chat and agent sessions from Jupyter.

The server extension is `ChatBridgeApp`; the Python client lives in
`jupyter_chatbridge.client` and imports nothing from jupyter_server; the
notebook panel is `ChatWidget` (ipywidgets). Heavy names are loaded lazily so
that importing the client stays light.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["Agent", "ChatBridgeApp", "ChatWidget", "EchoAgent", "UserMessage", "__version__"]


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from .app import ChatBridgeApp

    return [{"module": "jupyter_chatbridge.app", "app": ChatBridgeApp}]


def __getattr__(name: str) -> Any:
    if name == "ChatBridgeApp":
        from .app import ChatBridgeApp

        return ChatBridgeApp
    if name == "ChatWidget":
        from .widget import ChatWidget

        return ChatWidget
    if name in {"Agent", "EchoAgent", "UserMessage"}:
        from . import agents

        return getattr(agents, name)
    raise AttributeError(f"module 'jupyter_chatbridge' has no attribute {name!r}")
