"""Scenario 8, what the Prometheus metrics cost: fan-out with metrics on and off.

The first fan-out size (N=100 watchers: the metrics' per-event work is spread over
the fewest deliveries there, so it shows most). Ours as in every other scenario
(metrics are on by default) against the same server with `metrics_enabled=False`
(the baseline column, labelled "metrics off"), a fresh server process per run,
which side goes first alternating per repetition.
Each metrics-on run then scrapes `/metrics` (outside the measured window) and checks
that `chatbridge_frames_delivered_total` counted at least every delivery, so the
"on" side is known to have recorded.

    python -m bench --only metrics
"""

from __future__ import annotations

import asyncio
import math
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from .common import BASE_URL, HOST, TOKEN, X
from .harness import Config, cpu_rows, fanout_measure, fanout_rows, fresh, guarded, log
from .report import Row
from .servers import ServerPool

SIDES: dict[str, dict[str, object]] = {"on": {}, "off": {"metrics_enabled": False}}
OFF = "metrics off"  # the baseline's name in these rows
TARGET = 0.95  # with metrics, fan-out at least 95% of the rate without them


def frames_delivered(port: int) -> float:
    """`chatbridge_frames_delivered_total` as the server's `/metrics` reports it."""
    request = urllib.request.Request(
        f"http://{HOST}:{port}{BASE_URL}metrics", headers={"Authorization": f"token {TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "chatbridge_frames_delivered_total":
                return float(sample.value)
    raise RuntimeError("no chatbridge_frames_delivered_total on /metrics")


async def metrics_rows(cfg: Config, pool: ServerPool | None = None) -> list[Row]:
    """Fan-out deliveries/s and server CPU per delivery at the first fan-out size, with
    metrics on (ours) and off (the baseline column); targets: at least 0.95 and at
    most 1.05 times off."""
    sizes = cfg.fanout[:1]
    scenario = "8 metrics cost"
    note = f"ours = metrics on (the default); baseline column = metrics_enabled=False ({OFF})."
    fan_rows = fanout_rows(scenario, sizes, OFF, note, TARGET)
    cost_rows = cpu_rows(scenario, sizes, OFF, note, TARGET)
    names = list(SIDES)
    for rep in range(cfg.reps):
        order = names if rep % 2 == 0 else names[::-1]
        for row, cpu_row, (n, events) in zip(fan_rows, cost_rows, sizes, strict=True):
            for side in order:

                async def fan(side: str = side, n: int = n, events: int = events) -> Any:
                    async with fresh("ours", SIDES[side]) as system:
                        figures = await fanout_measure(
                            system, n, events, cfg.run_timeout, f"metrics N={n}", f"ours {side}"
                        )
                        if side == "on":
                            counted = await asyncio.to_thread(frames_delivered, system.server.port)
                            if counted < n * events:
                                raise RuntimeError(f"metrics counted {counted} of {n * events}")
                        return figures

                rate, per = await guarded(row, side, fan()) or (math.nan, math.nan)
                column = (row.ours, cpu_row.ours) if side == "on" else (row.floor, cpu_row.floor)
                assert column[0] is not None and column[1] is not None
                column[0].append(rate)
                column[1].append(per)
                log(
                    f"metrics rep {rep + 1} fan-out N={n}{X}{events} {side}: "
                    f"{rate:,.0f}/s, {per:.1f} µs"
                )
    out: list[Row] = []
    for row, cpu_row in zip(fan_rows, cost_rows, strict=True):
        out += [row, cpu_row]
    return out
