"""Client failure policy shared by every client: what is worth retrying, and how long to wait.

`classify` is the contract's permanent/transient table as a pure predicate;
`ReconnectPolicy` is the bounded, jittered reconnect schedule. Neither does I/O
or reads a clock, so both are unit-tested by plain calls.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable
from enum import Enum
from typing import Final

from jupyter_chatbridge.protocol import CloseCode

MAX_RECONNECT_ATTEMPTS: Final = 6
BACKOFF_BASE: Final = 1.0
BACKOFF_CAP: Final = 30.0
RETRY_DELAY: Final = 3.0
MAX_SEND_RETRIES: Final = 3
MAX_QUEUED_SENDS: Final = 100

PERMANENT_CLOSE_CODES: Final = frozenset(
    {
        CloseCode.SESSION_UNKNOWN,
        CloseCode.BAD_REQUEST,
        CloseCode.UNAUTHORIZED,
        CloseCode.FORBIDDEN,
    }
)
# Client errors that say "not now" rather than "never": time-out, too early, busy.
TRANSIENT_CLIENT_ERRORS: Final = frozenset({408, 425, 429})

# Attribute names under which exceptions of common libraries carry a code, most specific
# first: a WebSocket close code says more than the HTTP status of the upgrade.
_CODE_ATTRIBUTES: Final = ("close_code", "status", "status_code", "code")

# Past this exponent the nominal delay is the cap for any sane base; it keeps 2**n finite.
_MAX_EXPONENT: Final = 64


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
    if isinstance(failure, BaseException):
        code = failure_code(failure)
        if code is None:
            return Verdict.TRANSIENT
    else:
        code = failure
    if code in PERMANENT_CLOSE_CODES:
        return Verdict.PERMANENT
    if 400 <= code <= 499 and code not in TRANSIENT_CLIENT_ERRORS:
        return Verdict.PERMANENT
    return Verdict.TRANSIENT


def is_permanent(failure: int | BaseException) -> bool:
    """Shorthand for `classify(failure) is Verdict.PERMANENT`."""
    return classify(failure) is Verdict.PERMANENT


class ReconnectPolicy:
    """A bounded reconnect schedule: exponential backoff with equal jitter.

    The nth attempt's nominal delay is ``min(cap, base * 2**(n-1))``; the delay
    handed out is that nominal scaled uniformly into [0.5, 1.0], so clients that
    dropped together spread out while the total wait stays predictable.
    """

    def __init__(
        self,
        max_attempts: int = MAX_RECONNECT_ATTEMPTS,
        base: float = BACKOFF_BASE,
        cap: float = BACKOFF_CAP,
        random: Callable[[], float] = _random.random,
    ) -> None:
        if max_attempts < 0:
            raise ValueError(f"max_attempts must be >= 0, got {max_attempts}")
        if base <= 0 or cap <= 0:
            raise ValueError(f"base and cap must be positive, got base={base}, cap={cap}")
        self.max_attempts = max_attempts
        self.base = float(base)
        self.cap = float(cap)
        self._random = random
        self._attempts = 0

    @property
    def attempts(self) -> int:
        """How many delays `next_delay` has handed out since the last reset."""
        return self._attempts

    @property
    def exhausted(self) -> bool:
        """True once every attempt is used: the client should give up."""
        return self._attempts >= self.max_attempts

    def nominal_delay(self, attempt: int) -> float:
        """The un-jittered delay before the given (1-based) attempt."""
        if attempt < 1:
            raise ValueError(f"attempt is 1-based, got {attempt}")
        exponent = min(attempt - 1, _MAX_EXPONENT)
        return min(self.cap, self.base * 2.0**exponent)

    def next_delay(self) -> float | None:
        """Count one more attempt and return how long to wait before it, or None to give up."""
        if self.exhausted:
            return None
        self._attempts += 1
        nominal = self.nominal_delay(self._attempts)
        # Clamp in case an injected random strays outside [0, 1).
        fraction = min(1.0, max(0.0, self._random()))
        return nominal * (0.5 + 0.5 * fraction)

    def reset(self) -> None:
        """Start over; call after a connection succeeded."""
        self._attempts = 0

    def blind_retry_budget(self) -> float:
        """The sum of all nominal delays: the longest a client can spend retrying blind."""
        return sum(self.nominal_delay(n) for n in range(1, self.max_attempts + 1))
