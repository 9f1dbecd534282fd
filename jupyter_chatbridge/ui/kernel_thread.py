"""Where widgets may be created and closed: the kernel's main thread.

Creating or closing an ipywidget registers or unregisters a comm in the kernel's comm
table, a plain dict that the kernel's shell handlers iterate with no lock
(`Kernel.comm_info_request`). Doing it from another thread can make such a request fail
with "dictionary changed size during iteration". Changing an existing widget's traits is
safe from any thread: it only sends a comm message, which ipykernel hands to its IOPub
thread (`IOPubThread.send_multipart` queues it). So a panel drawn from its own thread
asks the kernel's thread to make and close its widgets, through `kernel.io_loop`
(the main thread's tornado loop on ipykernel 6 and 7, whose `add_callback` is
thread-safe).
"""

from __future__ import annotations

import collections
import contextvars
import logging
import sys
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

Job = Callable[[], None]


class KernelThread:
    """Runs jobs on the kernel's main thread: at once when already there (or when there
    is no kernel, hence no shared comm table), otherwise at its loop's next turn."""

    def __init__(
        self,
        schedule: Callable[[Job], Any] | None = None,
        thread: threading.Thread | None = None,
    ) -> None:
        self._schedule = schedule
        self._thread = thread
        self._jobs: collections.deque[Job] = collections.deque()
        self._lock = threading.Lock()
        self._scheduled = False

    @classmethod
    def of_this_kernel(cls) -> KernelThread:
        """The running ipykernel's main thread, or run-at-once if no kernel runs here."""
        kernelbase = sys.modules.get("ipykernel.kernelbase")
        if kernelbase is None or not kernelbase.Kernel.initialized():
            return cls()
        kernel = kernelbase.Kernel.instance()
        io_loop = getattr(kernel, "io_loop", None)
        if io_loop is None:  # not started (an in-process test kernel)
            return cls()
        # ipykernel 7 records the thread that started it; on 6 that is the main thread.
        shell_channel = getattr(kernel, "shell_channel_thread", None)
        thread = getattr(shell_channel, "parent_thread", None) or threading.main_thread()
        return cls(io_loop.add_callback, thread)

    def is_current(self) -> bool:
        """True on the kernel's thread (always, with no kernel)."""
        return self._thread is None or threading.current_thread() is self._thread

    @property
    def busy(self) -> bool:
        """Jobs wait for the kernel's thread (a cell keeps it busy)."""
        return bool(self._jobs)

    def run(self, job: Job) -> None:
        """Run `job` on the kernel's thread, now if this is it."""
        if self.is_current():
            self.drain()
            _run(job)
            return
        with self._lock:
            self._jobs.append(job)
            if self._scheduled or self._schedule is None:
                return
            self._scheduled = True
        self._schedule(self.drain)

    def drain(self) -> None:
        """Run the waiting jobs (on the kernel's thread only; elsewhere, nothing)."""
        if not self.is_current():
            return
        with self._lock:
            self._scheduled = False
        while True:
            try:
                job = self._jobs.popleft()
            except IndexError:
                return
            _run(job)


def _run(job: Job) -> None:
    try:
        # An empty context: ipykernel stamps the comm messages with the request it is
        # handling now, not with whatever context asked for the job.
        contextvars.Context().run(job)
    except Exception:
        log.exception("chatbridge widget: a widget job failed")
