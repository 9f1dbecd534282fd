"""Client failure policy shared by every client: what is worth retrying, and how long to wait.

The numbers and the permanent/transient table are the contract's client rules
(`protocol/client_rules.json`, docs/client-rules.md); this module gives them the
Python client's units (seconds) and accepts exceptions. `ReconnectPolicy` is the
reconnect budget (`protocol.rules.ReconnectBudget`) with jitter from an injected
`random`. Neither does I/O or reads a clock.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Final

from jupyter_chatbridge.protocol import rules
from jupyter_chatbridge.protocol.rules import BudgetDecision, ReconnectBudget

MAX_RECONNECT_ATTEMPTS: Final = rules.MAX_RECONNECT_ATTEMPTS
BACKOFF_BASE: Final = rules.BACKOFF_BASE_MS / 1000.0
BACKOFF_CAP: Final = rules.BACKOFF_CAP_MS / 1000.0
# A connection up this long was healthy: the reconnect budget starts over.
STABLE_TIME: Final = rules.STABLE_MS / 1000.0
IDLE_TIMEOUT: Final = rules.IDLE_TIMEOUT_MS / 1000.0
RETRY_DELAY: Final = rules.RETRY_DELAY_MS / 1000.0
MAX_SEND_RETRIES: Final = rules.MAX_SEND_RETRIES
MAX_QUEUED_SENDS: Final = rules.MAX_QUEUED_SENDS
MAX_REMEMBERED_FAILURES: Final = rules.MAX_REMEMBERED_FAILURES
PERMANENT_CLOSE_CODES: Final = rules.PERMANENT_CLOSE_CODES
TRANSIENT_CLIENT_ERRORS: Final = rules.TRANSIENT_CLIENT_ERRORS

# Attribute names under which exceptions of common libraries carry a code, most specific
# first: a WebSocket close code says more than the HTTP status of the upgrade.
_CODE_ATTRIBUTES: Final = ("close_code", "status", "status_code", "code")


class Verdict(str, Enum):
    """Whether a failure can go away by itself (transient) or never will (permanent)."""

    PERMANENT = "permanent"
    TRANSIENT = "transient"


def failure_code(failure: BaseException) -> int | None:
    """The close code or HTTP status an exception carries, or None (e.g. a bare OSError)."""
    for name in _CODE_ATTRIBUTES:
        value = getattr(failure, name, None)
        # bool is an int subclass, but a flag named `code` is not a status.
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def classify(failure: int | BaseException) -> Verdict:
    """Classify a WebSocket close code, an HTTP status, or an exception carrying one.

    Permanent: close codes 4404, 4400, 4401, 4403 and HTTP 4xx other than 408, 425
    and 429. Everything else, including exceptions without a code (network errors,
    time-outs), is transient.
    """
    code = failure_code(failure) if isinstance(failure, BaseException) else failure
    return Verdict(rules.classify_code(code))


def is_permanent(failure: int | BaseException) -> bool:
    """Shorthand for `classify(failure) is Verdict.PERMANENT`."""
    return classify(failure) is Verdict.PERMANENT


@dataclass(frozen=True)
class Reconnect:
    """What to do after a connection ended: retry after `delay` seconds, or stop."""

    decision: rules.Decision
    attempt: int
    delay: float | None = None


class ReconnectPolicy:
    """The reconnect budget: bounded attempts, exponential backoff with equal jitter.

    The nth attempt's nominal delay is ``min(cap, base * 2**(n-1))``; the delay
    handed out is that nominal scaled uniformly into [0.5, 1.0], so clients that
    dropped together spread out while the total wait stays predictable. The
    budget starts over only after evidence of a healthy connection: it stayed up
    for `stable_time` (`opened` ... `after_close`), or delivered a live event.
    """

    def __init__(
        self,
        max_attempts: int = MAX_RECONNECT_ATTEMPTS,
        base: float = BACKOFF_BASE,
        cap: float = BACKOFF_CAP,
        random: Callable[[], float] = _random.random,
        stable_time: float = STABLE_TIME,
    ) -> None:
        self._budget = ReconnectBudget(
            max_attempts, base_ms=base * 1000.0, cap_ms=cap * 1000.0, stable_ms=stable_time * 1000.0
        )
        self.max_attempts = max_attempts
        self.base = float(base)
        self.cap = float(cap)
        self.stable_time = float(stable_time)
        self._random = random

    @property
    def attempts(self) -> int:
        """How many attempts were spent since the budget last started over."""
        return self._budget.attempts

    @property
    def exhausted(self) -> bool:
        """True once every attempt is used: the client should give up."""
        return self._budget.exhausted

    def nominal_delay(self, attempt: int) -> float:
        """The un-jittered delay before the given (1-based) attempt."""
        return rules.nominal_delay_ms(attempt, self._budget.base_ms, self._budget.cap_ms) / 1000.0

    def next_delay(self) -> float | None:
        """Count one more attempt and return how long to wait before it, or None to give up."""
        return self._seconds(self._budget.next_attempt(self._random())).delay

    def opened(self, now: float) -> None:
        """The connection is up (at scheduler time `now`); not yet proof that it works."""
        self._budget.opened(now * 1000.0)

    def live_event(self) -> None:
        """The open connection delivered a session event: the budget starts over."""
        self._budget.live_event()

    def after_close(self, now: float, failure: int | BaseException) -> Reconnect:
        """The connection ended (or never opened) with `failure`: retry, offline or failed."""
        code = failure if isinstance(failure, int) else failure_code(failure)
        return self._seconds(self._budget.closed(now * 1000.0, code, self._random()))

    def reset(self) -> None:
        """Start over: the user asked to reconnect."""
        self._budget.reset()

    def blind_retry_budget(self) -> float:
        """The sum of all nominal delays: the longest a client can spend retrying blind."""
        return sum(self.nominal_delay(n) for n in range(1, self.max_attempts + 1))

    @staticmethod
    def _seconds(decision: BudgetDecision) -> Reconnect:
        delay = None if decision.delay_ms is None else decision.delay_ms / 1000.0
        return Reconnect(decision.decision, decision.attempt, delay)
