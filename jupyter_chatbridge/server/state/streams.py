"""One live stream per connection, and close handlers that cannot hurt a newer stream."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

StreamT = TypeVar("StreamT")


class StreamRegistry(Generic[StreamT]):
    """Maps a connection id to its single live stream."""

    def __init__(self) -> None:
        self._streams: dict[str, StreamT] = {}

    def __len__(self) -> int:
        return len(self._streams)

    def __iter__(self) -> Iterator[StreamT]:
        return iter(list(self._streams.values()))

    def get(self, connection_id: str) -> StreamT | None:
        """The live stream of a connection, or None while it has none."""
        return self._streams.get(connection_id)

    def replace(self, connection_id: str, stream: StreamT) -> StreamT | None:
        """Make `stream` the live one and return the one it displaced (which the caller ends)."""
        previous = self._streams.get(connection_id)
        self._streams[connection_id] = stream
        return previous if previous is not stream else None

    def remove_if_current(self, connection_id: str, stream: StreamT) -> bool:
        """Forget `stream` only if it is still the live one; True if it was.

        A stream's close handler runs late (after a newer stream for the same
        connection was registered); it must change nothing then, so callers
        act on a close only when this returns True.
        """
        if self._streams.get(connection_id) is stream:
            del self._streams[connection_id]
            return True
        return False
