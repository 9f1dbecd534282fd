"""Tornado handlers: thin glue between HTTP and `ChatBridge`."""

from __future__ import annotations

from typing import Any

from .api import (
    ConnectionActionHandler,
    SendHandler,
    SessionExportHandler,
    SessionHandler,
    SessionHistoryHandler,
    SessionsHandler,
    StopHandler,
)
from .events import EventStreamHandler
from .page import ChatPageHandler
from .spec import OpenApiHandler
from .websocket import SessionSocketHandler

SESSION_ID = r"(?P<session_id>[^/]+)"


def default_handlers() -> list[tuple[str, type, dict[str, Any]]]:
    """URL patterns relative to base_url (ExtensionApp prepends it)."""
    return [
        ("chatbridge/?", ChatPageHandler, {}),
        ("chatbridge/api/events", EventStreamHandler, {}),
        ("chatbridge/api/sessions", SessionsHandler, {}),
        (f"chatbridge/api/sessions/{SESSION_ID}", SessionHandler, {}),
        (f"chatbridge/api/sessions/{SESSION_ID}/events", SessionHistoryHandler, {}),
        (f"chatbridge/api/sessions/{SESSION_ID}/ws", SessionSocketHandler, {}),
        (f"chatbridge/api/sessions/{SESSION_ID}/stop", StopHandler, {}),
        (f"chatbridge/api/sessions/{SESSION_ID}/export", SessionExportHandler, {}),
        (
            r"chatbridge/api/(?P<action>watch|unwatch|attach|detach|suspend)",
            ConnectionActionHandler,
            {},
        ),
        ("chatbridge/api/send", SendHandler, {}),
        (r"chatbridge/api/openapi\.yaml", OpenApiHandler, {}),
    ]
