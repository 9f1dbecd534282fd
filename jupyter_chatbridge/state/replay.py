"""Bounded per-connection buffer of sent frames, for Last-Event-ID resume."""

from __future__ import annotations

from collections import deque
from typing import NamedTuple


class BufferedFrame(NamedTuple):
    """A frame as sent: its id and its SSE payload (shared by all receivers, not copied)."""

    frame_id: int
    payload: bytes


class ReplayResult(NamedTuple):
    """What a resume gets: the frames after the client's last id, and whether some were lost."""

    frames: list[BufferedFrame]
    gap: bool


class ReplayBuffer:
    """The last `capacity` frames of one connection, oldest dropped first."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("replay buffer capacity must be at least 1")
        self._frames: deque[BufferedFrame] = deque(maxlen=capacity)

    def __len__(self) -> int:
        return len(self._frames)

    def append(self, frame_id: int, payload: bytes) -> None:
        """Remember a frame; ids must grow by one each time."""
        self._frames.append(BufferedFrame(frame_id, payload))

    def since(self, last_event_id: int) -> ReplayResult:
        """Frames with id > `last_event_id`, in order; `gap` if any of them was already dropped."""
        if not self._frames or last_event_id >= self._frames[-1].frame_id:
            return ReplayResult([], False)
        oldest = self._frames[0].frame_id
        gap = last_event_id + 1 < oldest
        if gap or last_event_id < oldest:
            return ReplayResult(list(self._frames), gap)
        # Ids are contiguous within the buffer, so the start index is arithmetic.
        start = last_event_id - oldest + 1
        return ReplayResult([self._frames[i] for i in range(start, len(self._frames))], False)
