"""Every conformance vector of client_vectors.json, run against the Python client core.

The page's JavaScript runs the same file (tests/browser); a vector that either
implementation fails turns the suite red.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest

from jupyter_chatbridge.protocol.rules import RULES
from jupyter_chatbridge.testing.vectors import DRIVERS, load_vectors, run_vector

VECTORS = load_vectors()


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector(vector: dict[str, Any]) -> None:
    checked = 0
    for index, actual, expected in run_vector(vector):
        # Compare as JSON values: 1000 and 1000.0 are the same number in every language.
        assert json.loads(json.dumps(actual)) == expected, f"step {index}: {vector['steps'][index]}"
        checked += 1
    assert checked, "a vector must check at least one step"


def test_the_vectors_cover_every_rule_and_the_named_cases() -> None:
    rules = Counter(v["rule"] for v in VECTORS)
    assert set(rules) == set(DRIVERS)
    assert len(VECTORS) >= 40
    names = " ".join(v["name"] for v in VECTORS)
    for case in ("accept-then-drop", "rewound", "gap", "duplicate", "final failure after retries"):
        assert case in names
    assert len({v["name"] for v in VECTORS}) == len(VECTORS), "vector names are test ids"


def test_the_rules_file_holds_the_contract_numbers() -> None:
    assert RULES["reconnect"] == {
        "maxAttempts": 6,
        "baseMs": 1000,
        "capMs": 30000,
        "jitterMin": 0.5,
        "stableMs": 5000,
    }
    assert RULES["send"]["retryDelayMs"] == 3000
    assert RULES["send"]["maxRetries"] == 3
    assert RULES["send"]["maxQueued"] == 100
