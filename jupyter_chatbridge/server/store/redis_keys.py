"""The key names of the Redis store: every key one deployment (one prefix) uses."""

from __future__ import annotations


class RedisKeys:
    """The key names of one deployment (one prefix) on one Redis."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.sessions = f"{prefix}:sessions"
        self.order = f"{prefix}:order"
        self.notices = f"{prefix}:notices"
        """A stream of what every process must hear of: sessions created, take-overs."""

    def meta(self, session_id: str) -> str:
        return f"{self.prefix}:s:{session_id}"

    def session_of(self, meta_key: str) -> str:
        """The session id in its `meta` key."""
        return meta_key[len(self.prefix) + 3 :]

    def events(self, session_id: str) -> str:
        return f"{self.prefix}:s:{session_id}:events"

    def receipts(self, session_id: str) -> str:
        return f"{self.prefix}:s:{session_id}:receipts"

    def lease(self, session_id: str) -> str:
        return f"{self.prefix}:s:{session_id}:lease"

    def writers(self, session_id: str) -> str:
        return f"{self.prefix}:s:{session_id}:writers"

    def driver(self, session_id: str) -> str:
        return f"{self.prefix}:s:{session_id}:driver"
