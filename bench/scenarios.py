"""The scenarios and their registry. Each returns `Row`s; what they share (sizes, a fresh
server, the common measurements) is in `harness`.

"ours" runs on its default session store (SQLite, in the server's own temporary
JUPYTER_DATA_DIR: see `servers.OURS_CONFIG`) in every scenario; the store
scenario compares it with the same server on `store_path=:memory:`.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from typing import Any

from .client import EIOWatcher, HTTPConn
from .common import X, percentile
from .give_up import give_up
from .harness import (
    Config,
    CpuWindow,
    EndCounter,
    FirstOf,
    fanout_measure,
    fresh,
    guarded,
    log,
    rotated,
    send_latency,
)
from .report import Row
from .resume import resume
from .servers import ServerPool
from .store_cost import store_rows
from .systems import System, close_all, new_msg_id

# -- 1. fan-out throughput ------------------------------------------------------------


async def fanout(cfg: Config, pool: ServerPool) -> list[Row]:
    rows, cost_rows = [], []
    for n, events in cfg.fanout:
        rows.append(
            Row(
                "1 fan-out",
                f"N={n}{X}{events} ev",
                "deliveries/s",
                "higher",
                floor=[],
                socketio=[],
                min_vs_floor=0.75,
                min_vs_socketio=3,
            )
        )
        cost_rows.append(
            Row(
                "1 fan-out",
                f"server CPU per delivery, N={n}",
                "µs",
                "lower",
                floor=[],
                socketio=[],
                note="CPU time of the server process over the run / deliveries: "
                "unlike the rate, it barely moves when other processes take the CPU.",
            )
        )
    for rep in range(cfg.reps):
        for row, cost, (n, events) in zip(rows, cost_rows, cfg.fanout, strict=True):
            for kind in rotated(rep):
                # A fresh process per run: no run inherits another's garbage or lingering
                # (inactive, replay-buffered) connections.
                async def one(kind: str = kind, n: int = n, events: int = events) -> Any:
                    async with fresh(kind) as system:
                        return await fanout_measure(system, n, events, cfg.run_timeout)

                rate, us = await guarded(row, kind, one()) or (math.nan, math.nan)
                getattr(row, kind).append(rate)
                getattr(cost, kind).append(us)
                log(f"fan-out rep {rep + 1} N={n}{X}{events} {kind}: {rate:,.0f}/s, {us:.1f} µs")
    out = []
    for row, cost in zip(rows, cost_rows, strict=True):
        out += [row, cost]
    return out


# -- 2. latency ----------------------------------------------------------------------------


class LatencyCollector(EndCounter):
    def __init__(self, n: int) -> None:
        super().__init__(n)
        self.samples: list[int] = []

    def on_frames(self, reader: Any, frames: list[bytes], t: int) -> None:
        append = self.samples.append
        for f in frames:
            i = f.find(b'"t=')
            if i >= 0:
                append(t - int(f[i + 3 : f.index(b'"', i + 3)]))
            elif b"message_end" in f:
                self.ended += 1
                if self.ended >= self.n and not self.done.done():
                    self.done.set_result(None)


async def _latency_run(system: System, cfg: Config) -> tuple[float, float]:
    n = cfg.latency_watchers
    count = int(cfg.latency_rate * cfg.latency_seconds)
    room = await system.new_room()
    collector = LatencyCollector(n)
    watchers = await system.open_watchers(room, n, collector.on_frames)
    try:
        await asyncio.sleep(0.3)
        cpu = CpuWindow(system.server)
        await system.send(room, f"paced {count} {cfg.latency_rate}")
        await asyncio.wait_for(collector.done, cfg.latency_seconds + cfg.run_timeout)
        cpu.record("latency")
        if len(collector.samples) != n * count:
            raise RuntimeError(f"got {len(collector.samples)} of {n * count} timestamps")
        samples = sorted(collector.samples)
        return percentile(samples, 50) / 1e6, percentile(samples, 99) / 1e6
    finally:
        close_all(watchers)


async def latency(cfg: Config, pool: ServerPool) -> list[Row]:
    label = f"N={cfg.latency_watchers}, {cfg.latency_rate} ev/s"
    p50 = Row("2 latency", f"p50 {label}", "ms", "lower", floor=[], socketio=[])
    p99 = Row("2 latency", f"p99 {label}", "ms", "lower", floor=[], socketio=[], max_vs_floor=1.5)
    for rep in range(cfg.reps):
        for kind in rotated(rep):

            async def one(kind: str = kind) -> tuple[float, float]:
                async with fresh(kind) as system:
                    return await _latency_run(system, cfg)

            value = await guarded(p99, kind, one())
            a, b = value if value is not None else (math.nan, math.nan)
            getattr(p50, kind).append(a)
            getattr(p99, kind).append(b)
            log(f"latency rep {rep + 1} {kind}: p50 {a:.2f} ms p99 {b:.2f} ms")
    return [p50, p99]


# -- 3. idle memory --------------------------------------------------------------------


async def _memory_run(system: System, n: int) -> float:
    # Warm-up (fresh() already ran one burst): a few streams opened and closed,
    # so the baseline includes every code path an idle stream touches.
    room = await system.new_room()
    close_all(await system.open_watchers(room, 20))
    await asyncio.sleep(1.0)
    before = system.server.rss_bytes()
    watchers = await system.open_watchers(room, n)
    try:
        await asyncio.sleep(1.5)
        after = system.server.rss_bytes()
        return (after - before) / n
    finally:
        close_all(watchers)


async def memory(cfg: Config, pool: ServerPool) -> list[Row]:
    n = cfg.memory_streams
    row = Row(
        "3 idle memory",
        f"RSS growth per idle stream, {n} open",
        "KiB",
        "lower",
        floor=[],
        socketio=[],
        max_vs_floor=1.5,
        note="ours: each stream also watches one session (an idle watcher).",
    )
    for rep in range(cfg.reps):
        for kind in rotated(rep):

            async def one(kind: str = kind) -> float:
                async with fresh(kind) as system:
                    return await _memory_run(system, n)

            value = await guarded(row, kind, one())
            kib = math.nan if value is None else value / 1024
            getattr(row, kind).append(kib)
            log(f"memory rep {rep + 1} {kind}: {kib:.1f} KiB/stream")
    return [row]


# -- 5. send path ---------------------------------------------------------------------------


async def _send_throughput(system: System, room: str, total: int, conns: int) -> float:
    """Sends/s through one session, `conns` clients each with one request in flight;
    every 10th message is sent twice (a client retry) and must come back a duplicate."""
    first = FirstOf()
    [watcher] = await system.open_watchers(room, 1, first.on_frames)  # one live watcher
    clients: list[Any] = []
    try:
        for _ in range(conns):
            if system.name == "socketio":
                c = EIOWatcher()
                await c.connect(system.port)
            else:
                c = HTTPConn(system.port, system.server.auth_headers())
            clients.append(c)
        duplicates = 0

        async def worker(k: int) -> int:
            nonlocal duplicates
            client = clients[k]
            sent = 0
            for i in range(k, total, conns):
                ids = [new_msg_id()]
                if i % 10 == 0:
                    ids.append(ids[0])
                for cmid in ids:
                    body = {"sessionId": room, "clientMsgId": cmid, "text": "burst 0"}
                    if isinstance(client, EIOWatcher):
                        ack = await asyncio.wait_for(client.emit("send", body), 30)
                        receipt = json.loads(ack)[0]
                    else:
                        receipt = await system.send(room, "burst 0", cmid, client)
                    duplicates += bool(receipt.get("duplicate"))
                    sent += 1
            return sent

        t0 = time.monotonic_ns()
        sent = sum(await asyncio.gather(*(worker(k) for k in range(conns))))
        elapsed = (time.monotonic_ns() - t0) / 1e9
        expected_dups = len(range(0, total, 10))
        if duplicates != expected_dups:
            raise RuntimeError(f"{duplicates} duplicates answered, expected {expected_dups}")
        return sent / elapsed
    finally:
        watcher.close()
        for c in clients:
            c.close()


async def send_path(cfg: Config, pool: ServerPool) -> list[Row]:
    what = "send → first message_start"
    p50 = Row("5 send path", f"p50 {what}", "ms", "lower", floor=[], socketio=[])
    p99 = Row("5 send path", f"p99 {what}", "ms", "lower", floor=[], socketio=[])
    tput = Row(
        "5 send path",
        f"send throughput, 1 session, {cfg.send_connections} clients, 10% retries",
        "sends/s",
        "higher",
        floor=[],
        socketio=[],
        note="socketio sends over its socket (emit with ack); ours and floor POST.",
    )
    for rep in range(cfg.reps):
        for kind in rotated(rep):

            async def one(kind: str = kind) -> tuple[float, float, float]:
                async with fresh(kind) as system:
                    room = await system.new_room()
                    times = sorted(await send_latency(system, room, cfg.send_trials))
                    rate = await _send_throughput(
                        system, await system.new_room(), cfg.send_throughput, cfg.send_connections
                    )
                    return percentile(times, 50), percentile(times, 99), rate

            value = await guarded(p99, kind, one())
            a, b, c = value if value is not None else (math.nan,) * 3
            getattr(p50, kind).append(a)
            getattr(p99, kind).append(b)
            getattr(tput, kind).append(c)
            log(f"send rep {rep + 1} {kind}: p50 {a:.2f} ms p99 {b:.2f} ms, {c:,.0f} sends/s")
    return [p50, p99, tput]


async def redis_store(cfg: Config, pool: ServerPool | None = None) -> list[Row]:
    """The Redis store against SQLite (bench/redis_cost.py; imported here, on use)."""
    from .redis_cost import redis_rows

    return await redis_rows(cfg, pool)


async def metrics_cost(cfg: Config, pool: ServerPool) -> list[Row]:
    # Its own module (bench/metrics_cost.py), which builds on this one's helpers.
    from .metrics_cost import metrics_rows

    return await metrics_rows(cfg, pool)


SCENARIOS: dict[str, Callable[[Config, ServerPool], Any]] = {
    "fanout": fanout,
    "latency": latency,
    "memory": memory,
    "resume": resume,
    "send": send_path,
    "giveup": give_up,
    "store": store_rows,
    "redis": redis_store,
    "metrics": metrics_cost,
}
OPT_IN = {"redis"}
"""Scenarios only `--only` runs (the full suite's time budget leaves them out)."""
