"""One server per store file: an exclusive lock beside the RESOLVED store path.

Two servers appending to one file would interleave their seqs, so the second
is refused. The lock is keyed on the resolved path, so a symlink and its target
(or a path through a symlinked directory) are one store. The holder writes its
pid into the lock file, so the refusal can name it. `flock` dies with its
process: a crash never leaves a stale lock.
"""

from __future__ import annotations

import os
from pathlib import Path

from .base import StoreLocked

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock file, one server per file is on you
    fcntl = None  # type: ignore[assignment]


def lock_path_for(store_path: Path) -> Path:
    """The lock file of a store: `<resolved store file>.lock`."""
    resolved = store_path.resolve()
    return resolved.with_name(resolved.name + ".lock")


def read_holder(lock_path: Path) -> str:
    """The pid written in a lock file ("unknown" when there is none yet)."""
    try:
        return lock_path.read_text(errors="replace").strip()[:32] or "unknown"
    except OSError:
        return "unknown"


class StoreLock:
    """An exclusive, process-lifetime lock on a store file."""

    def __init__(self, store_path: Path) -> None:
        self.path = lock_path_for(store_path)
        self._store_path = store_path
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise `StoreLocked` naming the holder's pid.

        `OSError` when the lock file cannot be created.
        """
        if fcntl is None:  # pragma: no cover
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StoreLocked(str(self._store_path), read_holder(self.path)) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        """Let go (closing the descriptor releases the flock); idempotent."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
