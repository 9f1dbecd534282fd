"""The client failure policy: the contract's classification table and the reconnect schedule."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from jupyter_chatbridge.client.policy import (
    BACKOFF_BASE,
    BACKOFF_CAP,
    MAX_QUEUED_SENDS,
    MAX_RECONNECT_ATTEMPTS,
    MAX_SEND_RETRIES,
    RETRY_DELAY,
    ReconnectPolicy,
    Verdict,
    classify,
)

PERMANENT = Verdict.PERMANENT
TRANSIENT = Verdict.TRANSIENT


@pytest.mark.parametrize(
    ("code", "verdict"),
    [
        # WebSocket close codes
        (4404, PERMANENT),
        (4400, PERMANENT),
        (4401, PERMANENT),
        (4403, PERMANENT),
        (1000, TRANSIENT),
        (1001, TRANSIENT),
        (1006, TRANSIENT),
        (1011, TRANSIENT),
        (1012, TRANSIENT),
        (1013, TRANSIENT),
        (4000, TRANSIENT),
        (4500, TRANSIENT),
        # HTTP statuses
        (400, PERMANENT),
        (401, PERMANENT),
        (403, PERMANENT),
        (404, PERMANENT),
        (409, PERMANENT),
        (413, PERMANENT),
        (499, PERMANENT),
        (408, TRANSIENT),
        (425, TRANSIENT),
        (429, TRANSIENT),
        (500, TRANSIENT),
        (502, TRANSIENT),
        (503, TRANSIENT),
        (504, TRANSIENT),
        (599, TRANSIENT),
        (302, TRANSIENT),
    ],
)
def test_classify_codes_follow_the_contract_table(code: int, verdict: Verdict) -> None:
    assert classify(code) is verdict


class _HTTPClientError(Exception):
    """Shaped like tornado's HTTPClientError: the status is in `.code`."""

    def __init__(self, code: int) -> None:
        super().__init__(f"HTTP {code}")
        self.code = code


class _StatusError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"status {status}")
        self.status = status


class _WebSocketClosed(Exception):
    def __init__(self, close_code: int | None, code: int | None = None) -> None:
        super().__init__("closed")
        self.close_code = close_code
        self.code = code


@pytest.mark.parametrize(
    ("failure", "verdict"),
    [
        (_HTTPClientError(404), PERMANENT),
        (_HTTPClientError(403), PERMANENT),
        (_HTTPClientError(429), TRANSIENT),
        (_HTTPClientError(599), TRANSIENT),  # tornado's code for network errors
        (_HTTPClientError(503), TRANSIENT),
        (_StatusError(400), PERMANENT),
        (_StatusError(502), TRANSIENT),
        (_WebSocketClosed(4404), PERMANENT),
        (_WebSocketClosed(1006), TRANSIENT),
        # the close code is more specific than an HTTP-ish code on the same error
        (_WebSocketClosed(1006, code=404), TRANSIENT),
        # no close code recorded: fall back to the next attribute
        (_WebSocketClosed(None, code=404), PERMANENT),
        (ConnectionRefusedError(111, "refused"), TRANSIENT),
        (ConnectionResetError(), TRANSIENT),
        (OSError("network unreachable"), TRANSIENT),
        (TimeoutError(), TRANSIENT),
        (asyncio.TimeoutError(), TRANSIENT),
        (RuntimeError("anything else"), TRANSIENT),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
def test_classify_exceptions_by_their_code(failure: BaseException, verdict: Verdict) -> None:
    assert classify(failure) is verdict


def test_a_boolean_code_attribute_is_not_a_status() -> None:
    error = Exception("flag")
    error.code = True  # type: ignore[attr-defined]
    assert classify(error) is TRANSIENT


def test_contract_defaults() -> None:
    assert (MAX_RECONNECT_ATTEMPTS, BACKOFF_BASE, BACKOFF_CAP) == (6, 1.0, 30.0)
    assert (RETRY_DELAY, MAX_SEND_RETRIES, MAX_QUEUED_SENDS) == (3.0, 3, 100)


def _drain(policy: ReconnectPolicy) -> list[float]:
    delays = []
    while (delay := policy.next_delay()) is not None:
        delays.append(delay)
    return delays


def test_backoff_doubles_from_one_second_and_stops_after_six_attempts() -> None:
    # random() == 1.0 is outside random.random's range but marks the top of the jitter.
    policy = ReconnectPolicy(random=lambda: 1.0)
    assert _drain(policy) == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0]
    assert policy.attempts == 6
    assert policy.exhausted
    assert policy.next_delay() is None
    assert policy.attempts == 6  # giving up is not an attempt


def test_backoff_jitter_is_half_of_nominal_at_the_bottom() -> None:
    policy = ReconnectPolicy(random=lambda: 0.0)
    assert _drain(policy) == [0.5, 1.0, 2.0, 4.0, 8.0, 15.0]


def test_backoff_jitter_stays_within_half_and_full_nominal() -> None:
    samples = itertools.cycle([0.0, 0.25, 0.5, 0.75, 0.999999])
    for _ in range(5):
        policy = ReconnectPolicy(max_attempts=10, random=lambda: next(samples))
        for attempt, delay in enumerate(_drain(policy), start=1):
            nominal = min(30.0, 2.0 ** (attempt - 1))
            assert 0.5 * nominal <= delay <= nominal
            assert delay <= BACKOFF_CAP


def test_backoff_cap_holds_for_many_attempts() -> None:
    policy = ReconnectPolicy(max_attempts=200, base=1.0, cap=30.0, random=lambda: 1.0)
    delays = _drain(policy)
    assert len(delays) == 200
    assert max(delays) == 30.0
    assert delays[-1] == 30.0


def test_reset_after_a_successful_connection_starts_over() -> None:
    policy = ReconnectPolicy(random=lambda: 1.0)
    assert [policy.next_delay() for _ in range(3)] == [1.0, 2.0, 4.0]
    policy.reset()
    assert policy.attempts == 0
    assert not policy.exhausted
    assert _drain(policy) == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0]


def test_blind_retry_budget_stays_close_to_a_minute() -> None:
    policy = ReconnectPolicy()
    assert policy.blind_retry_budget() == 61.0
    # the jittered total lies between half and all of the nominal budget
    low = sum(d for d in _drain(ReconnectPolicy(random=lambda: 0.0)))
    assert low == pytest.approx(30.5)
    # the budget does not consume attempts
    assert policy.attempts == 0


def test_zero_attempts_gives_up_at_once() -> None:
    policy = ReconnectPolicy(max_attempts=0)
    assert policy.exhausted
    assert policy.next_delay() is None
    assert policy.blind_retry_budget() == 0.0


def test_invalid_policy_is_refused() -> None:
    with pytest.raises(ValueError):
        ReconnectPolicy(max_attempts=-1)
    with pytest.raises(ValueError):
        ReconnectPolicy(base=0)
