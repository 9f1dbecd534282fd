"""The Redis store against SQLite (scenario "redis", `python -m bench --only redis`).

One chatbridge server process on a Redis store (a redis-server of the bench's own
in a temporary dir, `appendonly yes`, `appendfsync everysec`: the durability of
SQLite's `synchronous=NORMAL` it is set against) and the same server on its
default SQLite store, on the same runs:

- fan-out deliveries/s (target at least 0.8 times SQLite's);
- send → first event p99, the send's own `user_message` reaching a watcher
  (target at most 2 times SQLite's), and send → the answer's `message_start`;
  the first event again on a Redis with `appendfsync always` (an fsync per write);
- two processes on one Redis, the watchers split half and half across them, the
  sends made on one: the total fan-out of both against one SQLite process with
  all the watchers (no target: it shows what a second process adds or costs).
"""

from __future__ import annotations

import asyncio
import math
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from jupyter_chatbridge.testing.redis_server import RedisServer

from .common import X, percentile
from .harness import (
    Config,
    EndCounter,
    fanout_measure,
    fanout_rows,
    fresh,
    guarded,
    log,
    send_latency,
)
from .report import Row
from .servers import ServerPool
from .systems import System, close_all

FANOUT_TARGET = 0.8
SEND_P99_TARGET = 2.0


async def _split_fanout_measure(
    sender: System, other: System, n: int, events: int, timeout: float
) -> float:
    """Deliveries/s of one burst sent on `sender`, to n watchers split across both."""
    room = await sender.new_room()
    counter = EndCounter(n)
    watchers = await sender.open_watchers(room, n - n // 2, counter.on_frames)
    try:
        # `other` finds the session in Redis when its watchers watch it.
        watchers += await other.open_watchers(room, n // 2, counter.on_frames)
        await asyncio.sleep(0.3)  # let the connection setup settle
        t0 = time.monotonic_ns()
        await sender.send(room, f"burst {events}")
        await asyncio.wait_for(counter.done, timeout)
        if counter.deltas != n * events:
            raise RuntimeError(f"delivered {counter.deltas} of {n * events} events")
        return n * events / ((counter.t_last - t0) / 1e9)
    finally:
        close_all(watchers)


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
        "ours = one server on a Redis store with appendfsync everysec, the durability "
        "of the SQLite default it is set against (synchronous=NORMAL in WAL: a crash of "
        "a server or of Redis loses nothing acknowledged, a power loss the last moments); "
        "baseline column = the same server on its default SQLite store."
    )
    fan_rows = fanout_rows(scenario, cfg.store_fanout, "sqlite", note, FANOUT_TARGET)
    split_rows = [
        Row(
            scenario,
            f"2 processes, watchers split: fan-out N={n}{X}{events} ev",
            "deliveries/s",
            "higher",
            floor=[],
            baseline="sqlite",
            note=(
                "ours = two server processes on one Redis, half the watchers on each, "
                "the burst sent on one; baseline column = one process on SQLite with "
                "all of them (the same runs as the fan-out row above)."
            ),
        )
        for n, events in cfg.store_fanout
    ]
    first_event = Row(
        scenario,
        "p99 send → first event (its user_message)",
        "ms",
        "lower",
        floor=[],
        max_vs_floor=SEND_P99_TARGET,
        baseline="sqlite",
        note=note,
    )
    p99 = Row(
        scenario,
        "p99 send → first message_start",
        "ms",
        "lower",
        floor=[],
        baseline="sqlite",
        note=note + " No target: the answer's start waits for more round trips to Redis.",
    )
    always = Row(
        scenario,
        "p99 send → first event, Redis with appendfsync always",
        "ms",
        "lower",
        floor=[],
        baseline="sqlite",
        note=(
            "ours = the same as the row above on a Redis that fsyncs every write (nothing "
            "acknowledged is lost even to a power loss): one fsync per send; no target."
        ),
    )
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as tmp:
        redis = RedisServer(Path(tmp) / "everysec", appendfsync="everysec")
        fsyncing = RedisServer(Path(tmp) / "always")
        redis.start()
        fsyncing.start()
        runs = iter(range(1_000_000))

        def config(store: str) -> dict[str, object]:
            # A SQLite file of the run's own (a fresh server on a fresh store, like Redis).
            if store == "redis":
                return {"store_url": redis.url}
            if store == "redis-always":
                return {"store_url": fsyncing.url}
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
                                return await fanout_measure(
                                    system, n, events, cfg.run_timeout, f"redis N={n}", store
                                )

                        rate, _ = await guarded(row, store, fan()) or (math.nan, math.nan)
                        _column(row, store).append(rate)
                        log(f"redis rep {rep + 1} fan-out N={n}{X}{events} {store}: {rate:,.0f}/s")
                for split, (n, events), one in zip(
                    split_rows, cfg.store_fanout, fan_rows, strict=True
                ):

                    async def fan_split(n: int = n, events: int = events) -> float:
                        redis.flushall()
                        async with AsyncExitStack() as stack:
                            a, b = [
                                await stack.enter_async_context(fresh("ours", config("redis")))
                                for _ in range(2)
                            ]
                            return await _split_fanout_measure(a, b, n, events, cfg.run_timeout)

                    rate = await guarded(split, "redis", fan_split())
                    split.ours.append(math.nan if rate is None else rate)
                    assert split.floor is not None and one.floor is not None
                    split.floor.append(one.floor[-1])  # this rep's one-process SQLite run
                    log(f"redis rep {rep + 1} two processes N={n}{X}{events}: {rate or 0:,.0f}/s")
                for store in order:

                    async def send(store: str = store) -> tuple[float, float]:
                        redis.flushall()
                        fsyncing.flushall()
                        async with fresh("ours", config(store)) as system:
                            room = await system.new_room()
                            users: list[float] = []
                            trials = cfg.store_send_trials
                            starts = await send_latency(system, room, trials, users)
                            return percentile(sorted(users), 99), percentile(sorted(starts), 99)

                    user, start = await guarded(p99, store, send()) or (math.nan, math.nan)
                    _column(first_event, store).append(user)
                    _column(p99, store).append(start)
                    log(f"redis rep {rep + 1} send p99 {store}: {user:.2f} / {start:.2f} ms")
                user, _ = await guarded(always, "redis", send("redis-always")) or (math.nan, 0)
                always.ours.append(user)
                assert always.floor is not None and first_event.floor is not None
                always.floor.append(first_event.floor[-1])  # this rep's SQLite run
                log(f"redis rep {rep + 1} send p99 redis, appendfsync always: {user:.2f} ms")
        finally:
            redis.stop()
            fsyncing.stop()
    return [*fan_rows, *split_rows, first_event, p99, always]
