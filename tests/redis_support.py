"""The real redis-server the Redis tests run against (shipped for the bench too)."""

from __future__ import annotations

from jupyter_chatbridge.testing.redis_server import RedisServer

__all__ = ["RedisServer"]
