"""Scripted faults: a plan of failures per endpoint, taken one per request.

A test puts a `FaultPlan` into the web application's settings::

    plan = FaultPlan()
    serverapp.web_app.settings["chatbridge_faults"] = plan
    plan.add("send", Fault.status(500), Fault.status(429, retry_after=1), Fault.drop_after())

Each request to the named endpoint takes the next fault in order; when the
plan is empty, requests pass untouched. The plan is read only by the handler
that `seam.install_fault_seam` puts in place of the production one.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal

FaultKind = Literal["none", "status", "drop_before", "drop_after"]


@dataclass(frozen=True)
class Fault:
    """One scripted failure."""

    kind: FaultKind
    status_code: int = 0
    retry_after: int | None = None

    @classmethod
    def none(cls) -> Fault:
        """Let this request through untouched (to space faults out)."""
        return cls("none")

    @classmethod
    def status(cls, code: int, retry_after: int | None = None) -> Fault:
        """Answer with this HTTP status (and Retry-After) instead of processing the request."""
        return cls("status", code, retry_after)

    @classmethod
    def drop_before(cls) -> Fault:
        """Close the connection without processing the request (nothing happened)."""
        return cls("drop_before")

    @classmethod
    def drop_after(cls) -> Fault:
        """Process the request, then close the connection before answering (it did happen)."""
        return cls("drop_after")


class FaultPlan:
    """Per-endpoint queues of faults, taken one per request."""

    def __init__(self) -> None:
        self._faults: dict[str, deque[Fault]] = {}
        self.taken: list[tuple[str, Fault]] = []

    def add(self, endpoint: str, *faults: Fault) -> FaultPlan:
        """Queue faults for an endpoint (`"send"`)."""
        self._faults.setdefault(endpoint, deque()).extend(faults)
        return self

    def take(self, endpoint: str) -> Fault | None:
        """The next fault for this endpoint, if any."""
        queue = self._faults.get(endpoint)
        if not queue:
            return None
        fault = queue.popleft()
        self.taken.append((endpoint, fault))
        return fault

    def remaining(self, endpoint: str) -> int:
        """How many faults are still queued for an endpoint."""
        return len(self._faults.get(endpoint, ()))
