"""The client rules of the contract, loaded once from `client_rules.json`.

The JSON file is the single source of the numbers and tables every client uses
(the Python client, the widget's view and the page's JavaScript, which reads the
same file). This module holds the pure functions over them: `classify`,
`backoff_ms` and the `ReconnectBudget`. Times are milliseconds, as in the file.
No I/O beyond reading the file at import, no clock, no randomness of its own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final, Literal

RULES_FILE: Final = "client_rules.json"


def _load() -> dict[str, Any]:
    text = resources.files(__package__).joinpath(RULES_FILE).read_text(encoding="utf-8")
    rules = json.loads(text)
    if not isinstance(rules, dict):
        raise ValueError(f"{RULES_FILE} must hold a JSON object")
    return rules


RULES: Final[dict[str, Any]] = _load()

_RECONNECT: Final = RULES["reconnect"]
MAX_RECONNECT_ATTEMPTS: Final[int] = int(_RECONNECT["maxAttempts"])
BACKOFF_BASE_MS: Final[float] = float(_RECONNECT["baseMs"])
BACKOFF_CAP_MS: Final[float] = float(_RECONNECT["capMs"])
JITTER_MIN: Final[float] = float(_RECONNECT["jitterMin"])
STABLE_MS: Final[float] = float(_RECONNECT["stableMs"])
IDLE_TIMEOUT_MS: Final[float] = float(RULES["heartbeat"]["idleTimeoutMs"])

_SEND: Final = RULES["send"]
RETRY_DELAY_MS: Final[float] = float(_SEND["retryDelayMs"])
MAX_SEND_RETRIES: Final[int] = int(_SEND["maxRetries"])
MAX_QUEUED_SENDS: Final[int] = int(_SEND["maxQueued"])
MAX_REMEMBERED_FAILURES: Final[int] = int(_SEND["maxRememberedFailures"])

_CLASSIFY: Final = RULES["classify"]
PERMANENT_CLOSE_CODES: Final = frozenset(int(c) for c in _CLASSIFY["permanentCloseCodes"])
_PERMANENT_HTTP: Final = (int(_CLASSIFY["permanentHttpMin"]), int(_CLASSIFY["permanentHttpMax"]))
# Client errors that say "not now" rather than "never": time-out, too early, busy.
TRANSIENT_CLIENT_ERRORS: Final = frozenset(int(c) for c in _CLASSIFY["transientHttp"])

_UNAVAILABLE: Final = RULES["unavailable"]

# Past this exponent the nominal delay is the cap for any sane base; it keeps 2**n finite.
_MAX_EXPONENT: Final = 64

VerdictName = Literal["permanent", "transient"]


def server_unavailable(status: int | None, body: Any) -> str | None:
    """The server's message when an answer to a call that commits nothing (the event
    stream, a GET) says the server cannot serve chat at all; None otherwise."""
    if status != _UNAVAILABLE["status"] or not isinstance(body, dict):
        return None
    if body.get("code") != _UNAVAILABLE["code"]:
        return None
    return str(body.get("error") or f"HTTP {status}")


ExpiryAction = Literal["attach", "taken_over", "none"]


def after_expiry(drove: bool, driver: str | None, client_id: str) -> ExpiryAction:
    """What a client does once the server no longer holds its connection (`resumed: false`):
    it drove the session and no one else took over (`driver`, the session's clientId, is
    none or its own `client_id`): `attach` again; another client drives it: `taken_over`
    (show it, with Take over); it did not drive: `none`."""
    if not drove:
        return "none"
    return "attach" if driver in (None, client_id) else "taken_over"


def classify_code(code: int | None) -> VerdictName:
    """The contract's table: a close code or HTTP status (None: no code at all) -> verdict."""
    if code is None:
        return "transient"
    if code in PERMANENT_CLOSE_CODES:
        return "permanent"
    low, high = _PERMANENT_HTTP
    if low <= code <= high and code not in TRANSIENT_CLIENT_ERRORS:
        return "permanent"
    return "transient"


def nominal_delay_ms(
    attempt: int, base_ms: float = BACKOFF_BASE_MS, cap_ms: float = BACKOFF_CAP_MS
) -> float:
    """The un-jittered delay before the given (1-based) reconnect attempt."""
    if attempt < 1:
        raise ValueError(f"attempt is 1-based, got {attempt}")
    return min(cap_ms, base_ms * 2.0 ** min(attempt - 1, _MAX_EXPONENT))


def backoff_ms(
    attempt: int,
    random: float,
    base_ms: float = BACKOFF_BASE_MS,
    cap_ms: float = BACKOFF_CAP_MS,
) -> float:
    """Equal jitter: the nominal delay scaled by `random` (clamped to [0, 1]) into [min, 1]."""
    fraction = min(1.0, max(0.0, random))
    return nominal_delay_ms(attempt, base_ms, cap_ms) * (JITTER_MIN + (1.0 - JITTER_MIN) * fraction)


Decision = Literal["retry", "offline", "failed"]


@dataclass(frozen=True)
class BudgetDecision:
    """What to do after a connection ended (or never opened)."""

    decision: Decision
    attempt: int  # the reconnect attempt about to be made (retry) or the attempts used
    delay_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"decision": self.decision, "attempt": self.attempt, "delayMs": self.delay_ms}


class ReconnectBudget:
    """How many reconnect attempts are left, reset only by evidence of a healthy connection.

    Evidence is a connection that stayed open for `stable_ms`, or one that
    delivered a live event. A server that accepts and drops at once therefore
    uses the budget up, and the client goes offline instead of retrying forever.
    """

    def __init__(
        self,
        max_attempts: int = MAX_RECONNECT_ATTEMPTS,
        *,
        base_ms: float = BACKOFF_BASE_MS,
        cap_ms: float = BACKOFF_CAP_MS,
        stable_ms: float = STABLE_MS,
    ) -> None:
        if max_attempts < 0:
            raise ValueError(f"max_attempts must be >= 0, got {max_attempts}")
        if base_ms <= 0 or cap_ms <= 0:
            raise ValueError(f"base and cap must be positive, got base={base_ms}, cap={cap_ms}")
        self.max_attempts = max_attempts
        self.base_ms = float(base_ms)
        self.cap_ms = float(cap_ms)
        self.stable_ms = float(stable_ms)
        self.attempts = 0
        self.opened_at: float | None = None

    @property
    def exhausted(self) -> bool:
        """True once every attempt is used."""
        return self.attempts >= self.max_attempts

    def opened(self, now_ms: float) -> None:
        """The connection is up (a WebSocket open, an SSE welcome); not yet proof of health."""
        self.opened_at = now_ms

    def live_event(self) -> None:
        """The open connection delivered a live session event: it works."""
        if self.opened_at is not None:
            self.attempts = 0

    def reset(self) -> None:
        """The user asked to reconnect (or the network came back): a fresh budget."""
        self.attempts = 0

    def closed(self, now_ms: float, code: int | None, random: float) -> BudgetDecision:
        """The connection ended or failed to open, with a close code / HTTP status or None."""
        opened_at, self.opened_at = self.opened_at, None
        if opened_at is not None and now_ms - opened_at >= self.stable_ms:
            self.attempts = 0
        if classify_code(code) == "permanent":
            return BudgetDecision("failed", self.attempts)
        return self.next_attempt(random)

    def next_attempt(self, random: float) -> BudgetDecision:
        """Spend one attempt: its delay, or "offline" when none is left."""
        if self.exhausted:
            return BudgetDecision("offline", self.attempts)
        self.attempts += 1
        delay = backoff_ms(self.attempts, random, self.base_ms, self.cap_ms)
        return BudgetDecision("retry", self.attempts, delay)
