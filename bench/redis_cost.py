"""The Redis store against SQLite (scenario "redis", `python -m bench --only redis`).

One chatbridge server process on a Redis store (a redis-server of the bench's own
in a temporary dir, `appendonly yes`, `appendfsync always`) against the same
server on its default SQLite store, on the same runs:

- fan-out deliveries/s (target at least 0.8 times SQLite's);
- send → first `message_start` p99 (target at most 2 times SQLite's).

Not measured yet: two processes on one Redis with the watchers split across them.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

from jupyter_chatbridge.testing.redis_server import RedisServer

from .common import X, percentile
from .report import Row
from .scenarios import Config, _fanout_measure, _guarded, _send_latency, fresh, log
from .servers import ServerPool

FANOUT_TARGET = 0.8
SEND_P99_TARGET = 2.0


def _column(row: Row, store: str) -> list[float]:
    """Redis is "ours"; SQLite is the row's baseline (`floor`) column."""
    if store == "redis":
        return row.ours
    assert row.floor is not None
    return row.floor


async def redis_rows(cfg: Config, pool: ServerPool | None = None) -> list[Row]:
    """Redis against SQLite, one server process each, alternating which goes first."""
    scenario = "8 redis store"
    note = (
        "ours = one server on a Redis store (appendfsync always); "
        "baseline column = the same server on its default SQLite store."
    )
    fan_rows = [
        Row(
            scenario,
            f"fan-out N={n}{X}{events} ev",
            "deliveries/s",
            "higher",
            floor=[],
            min_vs_floor=FANOUT_TARGET,
            baseline="sqlite",
            note=note,
        )
        for n, events in cfg.store_fanout
    ]
    what = "send → first message_start"
    p99 = Row(
        scenario,
        f"p99 {what}",
        "ms",
        "lower",
        floor=[],
        max_vs_floor=SEND_P99_TARGET,
        baseline="sqlite",
        note=note,
    )
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as tmp:
        redis = RedisServer(Path(tmp))
        redis.start()
        runs = iter(range(1_000_000))

        def config(store: str) -> dict[str, object]:
            # A SQLite file of the run's own (a fresh server on a fresh store, like Redis).
            if store == "redis":
                return {"store_url": redis.url}
            return {"store_path": str(Path(tmp) / f"run{next(runs)}.sqlite3")}

        stores = ["redis", "sqlite"]
        try:
            for rep in range(cfg.reps):
                order = stores if rep % 2 == 0 else stores[::-1]
                for row, (n, events) in zip(fan_rows, cfg.store_fanout, strict=True):
                    for store in order:

                        async def fan(store: str = store, n: int = n, events: int = events) -> Any:
                            redis.flushall()
                            async with fresh("ours", config(store)) as system:
                                return await _fanout_measure(
                                    system, n, events, cfg.run_timeout, f"redis N={n}", store
                                )

                        rate, _ = await _guarded(row, store, fan()) or (math.nan, math.nan)
                        _column(row, store).append(rate)
                        log(f"redis rep {rep + 1} fan-out N={n}{X}{events} {store}: {rate:,.0f}/s")
                for store in order:

                    async def send(store: str = store) -> float:
                        redis.flushall()
                        async with fresh("ours", config(store)) as system:
                            room = await system.new_room()
                            times = sorted(await _send_latency(system, room, cfg.store_send_trials))
                            return percentile(times, 99)

                    value = await _guarded(p99, store, send())
                    value = math.nan if value is None else value
                    _column(p99, store).append(value)
                    log(f"redis rep {rep + 1} send p99 {store}: {value:.2f} ms")
        finally:
            redis.stop()
    return [*fan_rows, p99]
