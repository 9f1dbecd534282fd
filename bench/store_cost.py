"""`python -m bench.store_cost`: what the durable session store costs.

Scenario 7 of the suite (rows "7 store cost"); run on its own, this module is a
short name for `python -m bench --only store --write no`. Ours on its default
SQLite store against the same server on
`store_path=:memory:`, fan-out deliveries/s (target ≥ 0.90 of :memory:), server
CPU per delivery and send → first `message_start`.

    python -m bench.store_cost            # the suite's FULL sizes, 3 repetitions
    python -m bench.store_cost --quick    # small sizes, 1 repetition

Other arguments are passed to `python -m bench` as they are (e.g. `--reps 5`).
"""

from __future__ import annotations

import math
import sys
from typing import Any

from .common import X, percentile
from .harness import (
    MEMORY,
    STORES,
    Config,
    cpu_rows,
    fanout_measure,
    fanout_rows,
    fresh,
    guarded,
    log,
    send_latency,
    store_column,
)
from .report import Row
from .servers import ServerPool

STORE_TARGET = 0.90  # SQLite fan-out at least 90% of the in-memory store's rate
STORE_P99_TARGET = 1.3  # SQLite send → first event p99 at most 1.3 times :memory:'s (issue 13)


async def store_rows(cfg: Config, pool: ServerPool | None = None) -> list[Row]:
    """What the durable session store costs: ours on its default SQLite store against
    the same server on `store_path=:memory:`, on the same runs.

    - fan-out deliveries/s, the `store_fanout` sizes (by default the fan-out
      scenario's), target at least 0.90 times :memory:'s; and the server's CPU time per delivery
      in those runs (every thread, the store's writer included; at most 1.1 times), which a
      shared, noisy machine disturbs far less than a rate;
    - send → the watcher's first event of it (`user_message`) and send → first
      `message_start`, p50/p99, p99 target at most 1.3 times :memory:'s: a `202` waits
      for the commit, and every event is shown only once committed (one group commit
      per loop iteration), so this is where durability shows.

    One fresh server process per run; which store goes first alternates per repetition.
    """
    note = (
        "ours = the default SQLite store (a file in the server's temporary data dir); "
        f"baseline column = the same server on store_path={MEMORY}."
    )
    scenario = "7 store cost"
    fan_rows = fanout_rows(scenario, cfg.store_fanout, MEMORY, note, STORE_TARGET)
    cost_rows = cpu_rows(scenario, cfg.store_fanout, MEMORY, note, STORE_TARGET)

    def send_row(metric: str, target: float | None = None) -> Row:
        return Row(scenario, metric, "ms", "lower", floor=[], max_vs_floor=target,
                   baseline=MEMORY, note=note)  # fmt: skip

    first_event = "send → first event (user_message) on the watcher's stream"
    user50 = send_row(f"p50 {first_event}")
    user99 = send_row(f"p99 {first_event}", STORE_P99_TARGET)
    what = "send → first message_start"
    p50 = send_row(f"p50 {what}")
    p99 = send_row(f"p99 {what}", STORE_P99_TARGET)
    names = list(STORES)
    for rep in range(cfg.reps):
        order = names if rep % 2 == 0 else names[::-1]
        for row, cpu_row, (n, events) in zip(fan_rows, cost_rows, cfg.store_fanout, strict=True):
            for store in order:

                async def fan(store: str = store, n: int = n, events: int = events) -> Any:
                    async with fresh("ours", STORES[store]) as system:
                        return await fanout_measure(
                            system, n, events, cfg.run_timeout, f"store N={n}", f"ours {store}"
                        )

                rate, per = await guarded(row, store, fan()) or (math.nan, math.nan)
                store_column(row, store).append(rate)
                store_column(cpu_row, store).append(per)
                log(
                    f"store rep {rep + 1} fan-out N={n}{X}{events} {store}: "
                    f"{rate:,.0f}/s, {per:.1f} µs"
                )
        for store in order:

            async def send(store: str = store) -> tuple[float, float, float, float]:
                async with fresh("ours", STORES[store]) as system:
                    room = await system.new_room()
                    users: list[float] = []
                    times = await send_latency(system, room, cfg.store_send_trials, users)
                    if len(users) != len(times):
                        raise RuntimeError(f"{len(users)} user_message of {len(times)} sends")
                    times.sort()
                    users.sort()
                    return (
                        percentile(users, 50),
                        percentile(users, 99),
                        percentile(times, 50),
                        percentile(times, 99),
                    )

            values = await guarded(p99, store, send()) or (math.nan,) * 4
            for send_row_, value in zip((user50, user99, p50, p99), values, strict=True):
                store_column(send_row_, store).append(value)
            log(
                f"store rep {rep + 1} send {store}: user_message p50 {values[0]:.2f} "
                f"p99 {values[1]:.2f} ms, message_start p50 {values[2]:.2f} "
                f"p99 {values[3]:.2f} ms"
            )
    out: list[Row] = []
    for row, cpu_row in zip(fan_rows, cost_rows, strict=True):
        out += [row, cpu_row]
    return [*out, user50, user99, p50, p99]


def main(argv: list[str] | None = None) -> int:
    from .__main__ import main as bench_main  # the suite imports this module: not at top

    args = list(sys.argv[1:] if argv is None else argv)
    return bench_main(["--only", "store", "--write", "no", *args])


if __name__ == "__main__":
    sys.exit(main())
