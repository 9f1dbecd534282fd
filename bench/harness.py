"""What every scenario runs on: the sizes (`Config`), a fresh warmed-up server, the
reader-load record, and the measurements several scenarios share (a fan-out burst,
send → first event).

Throughout, t is `time.monotonic_ns()` (CLOCK_MONOTONIC, the same clock in the
server processes, so a timestamp written by the server can be subtracted from a
receive time here).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import time
import traceback
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from .client import EIOWatcher, HTTPConn
from .common import X
from .report import Row
from .servers import ServerProcess
from .systems import SYSTEMS, System, close_all, new_msg_id

KINDS = ["ours", "floor", "socketio"]


@dataclass
class Config:
    reps: int = 3
    fanout: tuple[tuple[int, int], ...] = ((100, 2000), (1000, 200))
    latency_watchers: int = 100
    latency_rate: int = 100
    latency_seconds: float = 5.0
    memory_streams: int = 2000
    resume_trials: int = 200
    resume_events: int = 100
    resume_gap_buffer: int = 50
    # The big resume: a history of this many events missed, re-watched with afterSeq by
    # this many fresh clients per repetition, on the default store and on :memory:.
    resume_big_events: int = 10_000
    resume_big_trials: int = 20
    send_trials: int = 200
    send_throughput: int = 2000
    send_connections: int = 4
    giveup_trials: int = 50
    # The store scenario (SQLite vs :memory:): the fan-out sizes and send trials it
    # repeats on both stores, `reps` times.
    store_fanout: tuple[tuple[int, int], ...] = ((100, 2000), (1000, 200))
    store_send_trials: int = 200
    run_timeout: float = 90.0

    def describe(self) -> str:
        return "\n".join(f"{k} = {v}" for k, v in self.__dict__.items())


FULL = Config()
QUICK = Config(
    reps=1,
    fanout=((100, 200), (300, 20)),
    latency_watchers=20,
    latency_seconds=1.0,
    memory_streams=200,
    resume_trials=20,
    resume_big_events=2000,
    resume_big_trials=5,
    send_trials=30,
    send_throughput=200,
    giveup_trials=10,
    store_fanout=((100, 200),),
    store_send_trials=30,
    run_timeout=30.0,
)


# (scenario, system, server CPU share, reader CPU share) of every measured window, so the
# report can show that the reader process was not the bottleneck.
LOAD: list[tuple[str, str, float, float]] = []


def reader_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class CpuWindow:
    """CPU shares of the server and of this (reader) process over one measured window."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.t0 = time.monotonic()
        self.s0 = server.cpu_seconds()
        self.r0 = reader_cpu()

    def record(self, scenario: str, system: str | None = None) -> tuple[float, float]:
        wall = max(1e-9, time.monotonic() - self.t0)
        shares = ((self.server.cpu_seconds() - self.s0) / wall, (reader_cpu() - self.r0) / wall)
        LOAD.append((scenario, system or self.server.kind, *shares))
        return shares


def log(msg: str) -> None:
    print(f"  {time.strftime('%H:%M:%S')} {msg}", flush=True)


def rotated(rep: int) -> list[str]:
    """The A/B/C order of one repetition: it rotates, so no system always goes first."""
    k = rep % len(KINDS)
    return KINDS[k:] + KINDS[:k]


@contextlib.asynccontextmanager
async def fresh(kind: str, extra: dict[str, object] | None = None) -> AsyncIterator[System]:
    """A new server process of `kind`, warmed up (code paths loaded), stopped afterwards."""
    server = await ServerProcess(kind, extra).start()
    system = SYSTEMS[kind](server)
    try:
        await warm_up(system)
        yield system
    finally:
        system.close()
        server.stop()


async def warm_up(system: System) -> None:
    room = await system.new_room()
    ended = EndCounter(5)
    watchers = await system.open_watchers(room, 5, ended.on_frames)
    try:
        await system.send(room, "burst 20")
        await asyncio.wait_for(ended.done, 20)
    finally:
        close_all(watchers)
    await asyncio.sleep(0.2)


class EndCounter:
    """Counts `block_delta`s and notes when each watcher has the `message_end`."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.deltas = 0
        self.ended = 0
        self.t_last = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_frames(self, reader: Any, frames: list[bytes], t: int) -> None:
        for f in frames:
            if b"block_delta" in f:
                self.deltas += 1
            elif b"message_end" in f:
                self.ended += 1
                self.t_last = t
                if self.ended >= self.n and not self.done.done():
                    self.done.set_result(None)


async def guarded(row: Row, kind: str, coro: Any) -> Any:
    """Run one measurement; a failure is recorded on the row and becomes NaN, not a crash."""
    try:
        return await coro
    except Exception as exc:
        row.errors.append(f"{kind}: {type(exc).__name__}: {exc}".strip()[:300])
        log(f"{kind} failed: {exc!r}")
        traceback.print_exc()
        return None


# -- a fan-out burst (scenarios 1, 7 and 8) ------------------------------------------

# After the last delivery, wait this long before reading the server's CPU time, so
# work that trails the deliveries (ours: the store's last group commit, at most
# 50 ms later) is counted in the CPU per delivery too.
CPU_SETTLE = 0.1


async def fanout_measure(
    system: System,
    n: int,
    events: int,
    timeout: float,
    window: str | None = None,
    label: str | None = None,
) -> tuple[float, float]:
    """(deliveries/s, server CPU µs per delivery) of one burst to n watchers.

    `window` and `label` name the run in the reader-load table (default: the
    fan-out scenario and the server's kind).
    """
    room = await system.new_room()
    counter = EndCounter(n)
    watchers = await system.open_watchers(room, n, counter.on_frames)
    try:
        await asyncio.sleep(0.3)  # let the connection setup settle
        cpu = CpuWindow(system.server)
        t0 = time.monotonic_ns()
        await system.send(room, f"burst {events}")
        await asyncio.wait_for(counter.done, timeout)
        elapsed = (counter.t_last - t0) / 1e9
        server_share, reader_share = cpu.record(window or f"fan-out N={n}", label)
        await asyncio.sleep(CPU_SETTLE)
        server_cpu = system.server.cpu_seconds() - cpu.s0
        log(
            f"  {label or system.name}: server CPU {server_share:.0%}, "
            f"reader CPU {reader_share:.0%}"
        )
        if counter.deltas != n * events:
            raise RuntimeError(f"delivered {counter.deltas} of {n * events} events")
        return n * events / elapsed, server_cpu / (n * events) * 1e6
    finally:
        close_all(watchers)


def fanout_rows(
    scenario: str,
    sizes: tuple[tuple[int, int], ...],
    baseline: str,
    note: str,
    target: float | None = None,
) -> list[Row]:
    """A deliveries/s row per fan-out size against `baseline` (at least `target` times
    it, if given); in a comparison of two server configurations."""
    return [
        Row(
            scenario,
            f"fan-out N={n}{X}{events} ev",
            "deliveries/s",
            "higher",
            floor=[],
            min_vs_floor=target,
            baseline=baseline,
            note=note,
        )
        for n, events in sizes
    ]


def cpu_rows(
    scenario: str, sizes: tuple[tuple[int, int], ...], baseline: str, note: str, target: float
) -> list[Row]:
    """The server's CPU per delivery of the same runs: at most `2 - target` times the
    baseline's (the rate target's mirror)."""
    return [
        Row(
            scenario,
            f"server CPU per delivery, N={n}{X}{events}",
            "µs",
            "lower",
            floor=[],
            max_vs_floor=round(2 - target, 2),
            baseline=baseline,
            note=note,
        )
        for n, events in sizes
    ]


# -- send → first event (scenarios 5, 7 and 8) -----------------------------------------


class FirstOf:
    """Resolves `user` on the next `user_message` (the first event a send makes), `start`
    on the next `message_start` and `end` on the next `message_end`."""

    def __init__(self) -> None:
        self.user: asyncio.Future[int] | None = None
        self.start: asyncio.Future[int] | None = None
        self.end: asyncio.Future[int] | None = None

    def arm(self) -> None:
        loop = asyncio.get_running_loop()
        self.user, self.start, self.end = (loop.create_future() for _ in range(3))

    def on_frames(self, reader: Any, frames: list[bytes], t: int) -> None:
        for f in frames:
            if b'"user_message"' in f and self.user is not None and not self.user.done():
                self.user.set_result(t)
            elif b"message_start" in f and self.start is not None and not self.start.done():
                self.start.set_result(t)
            elif b"message_end" in f and self.end is not None and not self.end.done():
                self.end.set_result(t)


async def send_one(system: System, room: str, watcher: Any, conn: HTTPConn | None) -> None:
    body = {"sessionId": room, "clientMsgId": new_msg_id(), "text": "burst 0"}
    if isinstance(watcher, EIOWatcher):
        ack = json.loads(await asyncio.wait_for(watcher.emit("send", body), 10))
        if not ack or not ack[0].get("accepted"):
            raise RuntimeError(f"socketio send not accepted: {ack}")
    else:
        await system.send(room, body["text"], body["clientMsgId"], conn)


async def send_latency(
    system: System, room: str, trials: int, user_times: list[float] | None = None
) -> list[float]:
    """ms from each send until the watcher has the answer's `message_start`; also, into
    `user_times` if given, until it has the `user_message` (the send's first event)."""
    first = FirstOf()
    [watcher] = await system.open_watchers(room, 1, first.on_frames)
    try:
        times = []
        for i in range(trials + 10):  # the first 10 warm up
            first.arm()
            assert first.user is not None and first.start is not None and first.end is not None
            t0 = time.monotonic_ns()
            await send_one(system, room, watcher, None)
            t1 = await asyncio.wait_for(first.start, 10)
            await asyncio.wait_for(first.end, 10)
            if i >= 10:
                times.append((t1 - t0) / 1e6)
                if user_times is not None and first.user.done():
                    user_times.append((first.user.result() - t0) / 1e6)
        return times
    finally:
        watcher.close()


# -- the two stores scenarios 4 and 7 compare ----------------------------------------

# The two stores the store scenario compares: ours as in every other scenario (the
# default SQLite store in the server's temporary data dir), and the same server on
# store_path=:memory: (its figures go in the rows' baseline column).
# (None drops the key, so an --ours-config store_path cannot change the SQLite side.)
STORES: dict[str, dict[str, object]] = {
    "sqlite": {"store_path": None},
    "memory": {"store_path": ":memory:"},
}
MEMORY = ":memory:"  # the baseline's name in the store rows


def store_column(row: Row, store: str) -> list[float]:
    """SQLite is "ours"; the in-memory store is the row's baseline (`floor`) column."""
    if store == "sqlite":
        return row.ours
    assert row.floor is not None
    return row.floor
