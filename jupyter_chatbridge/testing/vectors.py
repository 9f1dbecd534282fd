"""Drivers that run one conformance vector of `client_vectors.json` against this package.

One small function per rule turns a step's `input` into the output its `expect`
is compared with (deep equality of plain JSON values). The JavaScript twin has
the same drivers; the Python tests run every vector through `run_vector`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from importlib import resources
from typing import Any, Final

from ..protocol.outbox_machine import OutboxMachine, QueueFull
from ..protocol.rules import (
    BACKOFF_BASE_MS,
    BACKOFF_CAP_MS,
    MAX_RECONNECT_ATTEMPTS,
    STABLE_MS,
    ReconnectBudget,
    after_expiry,
    backoff_ms,
    classify_code,
    server_unavailable,
)
from ..protocol.transcript import Transcript

VECTORS_FILE: Final = "client_vectors.json"


def load_vectors() -> list[dict[str, Any]]:
    """Every vector of the file, in file order."""
    text = (
        resources.files("jupyter_chatbridge.protocol")
        .joinpath(VECTORS_FILE)
        .read_text(encoding="utf-8")
    )
    vectors = json.loads(text)["vectors"]
    assert isinstance(vectors, list)
    return vectors


def _classify(_: Mapping[str, Any]) -> Callable[[Mapping[str, Any]], Any]:
    return lambda step: classify_code(step.get("code"))


def _unavailable(_: Mapping[str, Any]) -> Callable[[Mapping[str, Any]], Any]:
    return lambda step: server_unavailable(step.get("status"), step.get("body"))


def _expiry(_: Mapping[str, Any]) -> Callable[[Mapping[str, Any]], Any]:
    return lambda step: after_expiry(bool(step["drove"]), step.get("driver"), step["clientId"])


def _backoff(config: Mapping[str, Any]) -> Callable[[Mapping[str, Any]], Any]:
    base = float(config.get("baseMs", BACKOFF_BASE_MS))
    cap = float(config.get("capMs", BACKOFF_CAP_MS))
    return lambda step: backoff_ms(int(step["attempt"]), float(step["random"]), base, cap)


def _budget(config: Mapping[str, Any]) -> Callable[[Mapping[str, Any]], Any]:
    options = {
        k: float(config[n])
        for k, n in (("base_ms", "baseMs"), ("cap_ms", "capMs"), ("stable_ms", "stableMs"))
        if n in config
    }
    budget = ReconnectBudget(
        int(config.get("maxAttempts", MAX_RECONNECT_ATTEMPTS)),
        base_ms=options.get("base_ms", BACKOFF_BASE_MS),
        cap_ms=options.get("cap_ms", BACKOFF_CAP_MS),
        stable_ms=options.get("stable_ms", STABLE_MS),
    )

    def step(item: Mapping[str, Any]) -> Any:
        op = item["op"]
        decision: dict[str, Any] = {"decision": None, "delayMs": None}
        if op == "opened":
            budget.opened(float(item["t"]))
        elif op == "live":
            budget.live_event()
        elif op == "reset":
            budget.reset()
        elif op == "closed":
            result = budget.closed(float(item["t"]), item.get("code"), float(item["random"]))
            decision = {"decision": result.decision, "delayMs": result.delay_ms}
        else:
            raise ValueError(f"unknown budget op {op!r}")
        return {"attempts": budget.attempts, **decision}

    return step


def _outbox(config: Mapping[str, Any]) -> Callable[[Mapping[str, Any]], Any]:
    names = (
        ("max_queued", "maxQueued"),
        ("max_retries", "maxRetries"),
        ("max_failed", "maxRememberedFailures"),
    )
    options: dict[str, Any] = {k: int(config[n]) for k, n in names if n in config}
    if "retryDelayMs" in config:
        options["retry_delay_ms"] = float(config["retryDelayMs"])
    machine = OutboxMachine(**options)

    def step(item: Mapping[str, Any]) -> Any:
        op = item["op"]
        events: list[Any] = []
        wait: float | None = None
        refused: str | None = None
        try:
            if op == "enqueue":
                events = machine.enqueue(item["sessionId"], item["clientMsgId"], item["text"])
            elif op == "retry":
                events = machine.retry(item["clientMsgId"])
            elif op == "outcome":
                events, wait = machine.outcome(
                    item.get("status"),
                    seq=item.get("seq"),
                    duplicate=item.get("duplicate"),
                    retry_after_ms=item.get("retryAfterMs"),
                )
            elif op == "timer":
                machine.timer()
            else:
                raise ValueError(f"unknown outbox op {op!r}")
        except QueueFull:
            refused = "full"
        except KeyError:
            refused = "unknown"
        post = machine.take_post()
        return {
            "events": [event.to_dict() for event in events],
            "refused": refused,
            "waitMs": wait,
            "post": None
            if post is None
            else {"clientMsgId": post.client_msg_id, "attempt": post.posts},
            "pending": machine.pending,
            "failed": machine.failed_ids,
        }

    return step


def _transcript(config: Mapping[str, Any]) -> Callable[[Mapping[str, Any]], Any]:
    transcript = Transcript(config.get("sessionId"))

    def step(item: Mapping[str, Any]) -> Any:
        transcript.apply(item)
        return transcript.snapshot()

    return step


DRIVERS: Final[dict[str, Callable[[Mapping[str, Any]], Callable[[Mapping[str, Any]], Any]]]] = {
    "classify": _classify,
    "unavailable": _unavailable,
    "expiry": _expiry,
    "backoff": _backoff,
    "budget": _budget,
    "outbox": _outbox,
    "transcript": _transcript,
}


def run_vector(vector: Mapping[str, Any]) -> Iterator[tuple[int, Any, Any]]:
    """Yield (step index, actual output, expected output) for every step that has `expect`."""
    step = DRIVERS[vector["rule"]](vector.get("config", {}))
    for index, item in enumerate(vector["steps"]):
        actual = step(item["input"])
        if "expect" in item:
            yield index, actual, item["expect"]
