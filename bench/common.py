"""Things the bench servers and the reader process share: payload shapes and timing helpers."""

from __future__ import annotations

import json
import math
import time

from .agents import CHUNK_TEXT

TOKEN = "bench-token"
BASE_URL = "/bench/"
HOST = "127.0.0.1"  # the only address any part of the suite ever talks to
X = "\u00d7"  # the multiplication sign of labels like "N=100 x 2000"
DASH = "\u2013"  # the en dash of ranges like "1.2 - 3.4"


def event_json(event_type: str, session_id: str, seq: int, **fields: object) -> str:
    """A session event exactly as jupyter_chatbridge serialises it (same keys, same order)."""
    body = {"type": event_type, "sessionId": session_id, "seq": seq, **fields}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def chunk_text(paced: bool) -> str:
    """What one agent chunk carries: a fixed filler, or the publish time for latency runs."""
    return f"t={time.monotonic_ns()}" if paced else CHUNK_TEXT


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (q in 0..100)."""
    if not sorted_values:
        return math.nan
    k = max(0, min(len(sorted_values) - 1, math.ceil(q / 100 * len(sorted_values)) - 1))
    return sorted_values[k]
