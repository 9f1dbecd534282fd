"""Protocol state as plain data: no tornado, no sockets, no clocks of their own.

Every class here is driven by plain method calls and unit-tested directly.
"""

from .connections import CidOwnedElsewhere, Connection, ConnectionRegistry, OpenResult
from .eventlog import EventLog, LoggedEvent, SendReceipt
from .replay import ReplayBuffer, ReplayResult
from .sessions import Session, SessionExists, SessionRegistry
from .streams import StreamRegistry

__all__ = [
    "CidOwnedElsewhere",
    "Connection",
    "ConnectionRegistry",
    "EventLog",
    "LoggedEvent",
    "OpenResult",
    "ReplayBuffer",
    "ReplayResult",
    "SendReceipt",
    "Session",
    "SessionExists",
    "SessionRegistry",
    "StreamRegistry",
]
