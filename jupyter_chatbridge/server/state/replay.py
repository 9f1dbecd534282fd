"""Bounded per-connection buffer of sent frames, for Last-Event-ID resume."""

from __future__ import annotations

import itertools
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
    """The last `capacity` frames of one connection, oldest dropped first.

    Frame ids of one connection are contiguous, so only the payloads are kept
    (plain bytes, which the garbage collector does not track: this buffer holds
    a slot per delivery and must not make collections of the whole heap slower)
    together with the id of the newest one.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("replay buffer capacity must be at least 1")
        self._capacity = capacity
        # Made on the first frame: an idle connection should cost as little as possible.
        self._payloads: deque[bytes] | None = None
        self._last_id = 0

    def __len__(self) -> int:
        return len(self._payloads) if self._payloads is not None else 0

    def append(self, frame_id: int, payload: bytes) -> None:
        """Remember a frame; each id must be the previous one plus one."""
        if self._payloads is None:
            self._payloads = deque(maxlen=self._capacity)
        elif frame_id != self._last_id + 1:
            # Not contiguous (a new numbering): what is held no longer lines up with ids.
            self._payloads.clear()
        self._payloads.append(payload)
        self._last_id = frame_id

    def since(self, last_event_id: int) -> ReplayResult:
        """Frames with id > `last_event_id`, in order; `gap` if any of them was already dropped."""
        if self._payloads is None or not self._payloads or last_event_id >= self._last_id:
            return ReplayResult([], False)
        oldest = self._last_id - len(self._payloads) + 1
        gap = last_event_id + 1 < oldest
        start = max(0, last_event_id - oldest + 1)
        tail = itertools.islice(self._payloads, start, None)
        frames = [BufferedFrame(frame_id, p) for frame_id, p in enumerate(tail, oldest + start)]
        return ReplayResult(frames, gap)

    def byte_size(self) -> int:
        """Bytes of the payloads held (for the metrics; a scrape, not a hot path)."""
        return sum(map(len, self._payloads)) if self._payloads is not None else 0
