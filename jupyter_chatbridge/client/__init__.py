"""The Python client of jupyter_chatbridge (imports nothing from jupyter_server).

Scripts use the blocking `ChatClient`; asyncio code uses `AsyncChatClient`.
The pieces below them (`EventStream`, `Outbox`, `SessionSocket`, the policy)
are public for clients that need their own composition.
"""

from ..protocol.status import ConnectionStatus, StatusChange
from .api import (
    AgentError,
    AnswerStopped,
    AsyncChatClient,
    AsyncSession,
    SendFailed,
    SessionLost,
)
from .blocking import ChatClient, Session
from .discovery import ServerNotFound, discover_server
from .outbox import Outbox, OutboxEvent, OutboxFull
from .policy import ReconnectPolicy, Verdict, classify
from .socket import SessionSocket, SessionUnknown
from .stream import EventStream, StreamClosed
from .transport import HTTPStatusError, HttpTransport, TransportError

__all__ = [
    "AgentError",
    "AnswerStopped",
    "AsyncChatClient",
    "AsyncSession",
    "ChatClient",
    "ConnectionStatus",
    "EventStream",
    "HTTPStatusError",
    "HttpTransport",
    "Outbox",
    "OutboxEvent",
    "OutboxFull",
    "ReconnectPolicy",
    "SendFailed",
    "ServerNotFound",
    "Session",
    "SessionLost",
    "SessionSocket",
    "SessionUnknown",
    "StatusChange",
    "StreamClosed",
    "TransportError",
    "Verdict",
    "classify",
    "discover_server",
]
