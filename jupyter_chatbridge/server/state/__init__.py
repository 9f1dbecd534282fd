"""Protocol state as plain data: no tornado, no sockets, no clocks of their own.

Every class here is driven by plain method calls and unit-tested directly.
"""

from .connections import CidOwnedElsewhere, Connection, ConnectionRegistry, OpenResult
from .eventlog import TRIM_EVERY, EventLog, LoggedEvent, LogSink, SendReceipt
from .replay import ReplayBuffer, ReplayResult
from .sessions import PendingInput, Session, SessionExists, SessionRegistry, SessionSink
from .streams import StreamRegistry

__all__ = [
    "TRIM_EVERY",
    "CidOwnedElsewhere",
    "Connection",
    "ConnectionRegistry",
    "EventLog",
    "LogSink",
    "LoggedEvent",
    "OpenResult",
    "PendingInput",
    "ReplayBuffer",
    "ReplayResult",
    "SendReceipt",
    "Session",
    "SessionExists",
    "SessionRegistry",
    "SessionSink",
    "StreamRegistry",
]
