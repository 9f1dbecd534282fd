"""The seven scenarios. Each returns `Row`s; the reader side of every run lives here.

"ours" runs on its default session store (SQLite, in the server's own temporary
JUPYTER_DATA_DIR: see `servers.OURS_CONFIG`) in every scenario; the store
scenario compares it with the same server on `store_path=:memory:`.

Throughout, t is `time.monotonic_ns()` (CLOCK_MONOTONIC, the same clock in the
server processes, so a timestamp written by the server can be subtracted from a
receive time here).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import resource
import time
import traceback
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from .client import EIOWatcher, HTTPConn, HTTPStatusError, WSReader
from .common import DASH, X, percentile
from .report import Row
from .servers import ServerPool, ServerProcess
from .systems import SYSTEMS, Ours, System, close_all, new_cid, new_msg_id

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
        await _warm_up(system)
        yield system
    finally:
        system.close()
        server.stop()


async def _warm_up(system: System) -> None:
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


async def _guarded(row: Row, kind: str, coro: Any) -> Any:
    """Run one measurement; a failure is recorded on the row and becomes NaN, not a crash."""
    try:
        return await coro
    except Exception as exc:
        row.errors.append(f"{kind}: {type(exc).__name__}: {exc}".strip()[:300])
        log(f"{kind} failed: {exc!r}")
        traceback.print_exc()
        return None


# -- 1. fan-out throughput ------------------------------------------------------------


# After the last delivery, wait this long before reading the server's CPU time, so
# work that trails the deliveries (ours: the store's last group commit, at most
# 50 ms later) is counted in the CPU per delivery too.
CPU_SETTLE = 0.1


async def _fanout_measure(
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
                        return await _fanout_measure(system, n, events, cfg.run_timeout)

                rate, us = await _guarded(row, kind, one()) or (math.nan, math.nan)
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

            value = await _guarded(p99, kind, one())
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

            value = await _guarded(row, kind, one())
            kib = math.nan if value is None else value / 1024
            getattr(row, kind).append(kib)
            log(f"memory rep {rep + 1} {kind}: {kib:.1f} KiB/stream")
    return [row]


# -- 4. resume -------------------------------------------------------------------------------


def _frame_id(f: bytes) -> int | None:
    if f.startswith(b"id: "):
        return int(f[4 : f.index(b"\n")])
    return None


def _frame_seq(f: bytes) -> int | None:
    i = f.find(b'"seq":')
    if i < 0:
        return None
    i += 6
    j = i
    while j < len(f) and 48 <= f[j] <= 57:
        j += 1
    return int(f[i:j])


class Tracker:
    """A watcher's view of one session: last frame id, and which seqs arrived when."""

    def __init__(self, last_id: int = 0, last_seq: int = 0) -> None:
        self.last_id = last_id
        self.last_seq = last_seq  # highest contiguous seq held
        self.want: int | None = None  # complete once every seq up to this has arrived
        self.got: set[int] = set()
        self.done: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def on_frames(self, reader: Any, frames: list[bytes], t: int) -> None:
        for f in frames:
            fid = _frame_id(f)
            if fid is not None:
                self.last_id = max(self.last_id, fid)
            seq = _frame_seq(f)
            if seq is not None and seq > self.last_seq:
                self.got.add(seq)
                while self.last_seq + 1 in self.got:
                    self.last_seq += 1
                    self.got.discard(self.last_seq)
        if self.want is not None and self.last_seq >= self.want and not self.done.done():
            self.done.set_result(t)


async def _resume_trials(system: Ours, cfg: Config, gap: bool, trials: int) -> list[float]:
    room = await system.new_room()
    ctl = HTTPConn(system.port, system.server.auth_headers())
    observer_end: list[asyncio.Future[None]] = []

    def observe(reader: Any, frames: list[bytes], t: int) -> None:
        ended = any(b"message_end" in f for f in frames)
        if ended and observer_end and not observer_end[0].done():
            observer_end[0].set_result(None)

    observer = await system.open_stream(observe)
    await system.watch(room, observer.state["cid"], ctl)
    cid = new_cid()
    tracker = Tracker()
    watcher = await system.open_stream(tracker.on_frames, cid=cid)
    await system.watch(room, cid, ctl)
    times = []
    mismatched = 0
    try:
        for _ in range(trials):
            watcher.close()
            await asyncio.wait_for(watcher.closed, 10)
            observer_end[:] = [asyncio.get_running_loop().create_future()]
            receipt = await system.send(room, f"burst {cfg.resume_events}", conn=ctl)
            await asyncio.wait_for(observer_end[0], 10)
            # Every event of the answer has passed; the watcher missed all of them.
            final = receipt["seq"] + cfg.resume_events + 2  # user_message, start, deltas, end
            tracker = Tracker(tracker.last_id, tracker.last_seq)
            tracker.want = final
            t0 = time.monotonic_ns()
            watcher = await system.open_stream(
                tracker.on_frames, cid=cid, last_event_id=tracker.last_id
            )
            if bool(watcher.state["welcome"].get("gap")) != gap:
                mismatched += 1
            if gap:
                # The contract's recovery: re-watch from the last seq held; the
                # server sends what follows it on the stream, then live events.
                await system.watch(room, cid, ctl, after_seq=tracker.last_seq)
            t1 = await asyncio.wait_for(tracker.done, 10)
            times.append((t1 - t0) / 1e6)
    finally:
        watcher.close()
        observer.close()
        ctl.close()
    if mismatched:
        raise RuntimeError(f"{mismatched} of {trials} welcomes had gap={not gap}")
    return times


async def resume(cfg: Config, pool: ServerPool) -> list[Row]:
    rows = []
    for gap in (False, True):
        how = "afterSeq (gap path)" if gap else "Last-Event-ID"
        how += f", {cfg.resume_trials} trials/rep"
        p50 = Row("4 resume", f"p50 {how}, {cfg.resume_events} missed", "ms", "lower")
        p99 = Row(
            "4 resume", f"p99 {how}, {cfg.resume_events} missed", "ms", "lower", absolute_max=20
        )
        if gap:
            p99.note = (
                f"gap forced with replay_buffer_size={cfg.resume_gap_buffer}: the welcome says "
                "gap, the client re-watches with afterSeq; time includes that POST."
            )
        extra = {"replay_buffer_size": cfg.resume_gap_buffer} if gap else None
        per_rep = cfg.resume_trials
        for rep in range(cfg.reps):

            async def one(extra: Any = extra, gap: bool = gap, per_rep: int = per_rep) -> Any:
                server = await pool.get("ours", extra)
                system = Ours(server)
                try:
                    return await _resume_trials(system, cfg, gap, per_rep)
                finally:
                    system.close()

            times = await _guarded(p99, "ours", one())
            s = sorted(times or [])
            p50.ours.append(percentile(s, 50))
            p99.ours.append(percentile(s, 99))
            log(f"resume {how} rep {rep + 1}: p50 {p50.ours[-1]:.2f} p99 {p99.ours[-1]:.2f} ms")
        rows += [p50, p99]
    return rows + await _big_resume(cfg)


async def _big_resume_trials(system: Ours, cfg: Config) -> list[float]:
    """ms from connect() until a fresh client that re-watches with afterSeq holds every
    one of the `resume_big_events` events it missed (one answer: user_message,
    message_start, the deltas, message_end), for `resume_big_trials` clients in turn."""
    missed = cfg.resume_big_events
    room = await system.new_room()
    ctl = HTTPConn(system.port, system.server.auth_headers())
    ended = EndCounter(1)
    observer = await system.open_stream(ended.on_frames)
    try:
        await system.watch(room, observer.state["cid"], ctl)
        receipt = await system.send(room, f"burst {missed - 3}", conn=ctl)
        await asyncio.wait_for(ended.done, cfg.run_timeout)
        after = int(receipt["seq"]) - 1  # the client holds everything before the answer
        final = after + missed
        times = []
        for _ in range(cfg.resume_big_trials):
            tracker = Tracker(last_seq=after)
            tracker.want = final
            cid = new_cid()
            t0 = time.monotonic_ns()
            watcher = await system.open_stream(tracker.on_frames, cid=cid)
            try:
                await system.watch(room, cid, ctl, after_seq=after)
                t1 = await asyncio.wait_for(tracker.done, cfg.run_timeout)
            finally:
                watcher.close()
            times.append((t1 - t0) / 1e6)
            await asyncio.wait_for(watcher.closed, 10)
        return times
    finally:
        observer.close()
        ctl.close()


async def _big_resume(cfg: Config) -> list[Row]:
    """The history replay of issue 13: 10,000 missed events, paced from the log as the
    client reads, on the default SQLite store against the same server on :memory:."""
    missed, trials = cfg.resume_big_events, cfg.resume_big_trials
    how = f"re-watch afterSeq, {missed:,} missed, {trials} trials/rep"
    note = (
        "a fresh client opens a stream and POSTs watch with afterSeq before a "
        f"{missed:,}-event answer; time from connect() until it holds the last one. "
        f"ours = the default SQLite store; baseline column = the same on store_path={MEMORY}."
    )
    rows = [
        Row("4 resume", f"{q} {how}", "ms", "lower", floor=[], baseline=MEMORY, note=note)
        for q in ("p50", "p99")
    ]
    for rep in range(cfg.reps):
        order = list(STORES) if rep % 2 == 0 else list(STORES)[::-1]
        for store in order:

            async def one(store: str = store) -> list[float]:
                async with fresh("ours", STORES[store]) as system:
                    assert isinstance(system, Ours)
                    return await _big_resume_trials(system, cfg)

            times = sorted(await _guarded(rows[1], store, one()) or [])
            for row, q in zip(rows, (50, 99), strict=True):
                _store_column(row, store).append(percentile(times, q))
            log(
                f"resume {missed:,} missed rep {rep + 1} {store}: "
                f"p50 {percentile(times, 50):.1f} p99 {percentile(times, 99):.1f} ms"
            )
    return rows


# -- 5. send path ---------------------------------------------------------------------------


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


async def _send_one(system: System, room: str, watcher: Any, conn: HTTPConn | None) -> None:
    body = {"sessionId": room, "clientMsgId": new_msg_id(), "text": "burst 0"}
    if isinstance(watcher, EIOWatcher):
        ack = json.loads(await asyncio.wait_for(watcher.emit("send", body), 10))
        if not ack or not ack[0].get("accepted"):
            raise RuntimeError(f"socketio send not accepted: {ack}")
    else:
        await system.send(room, body["text"], body["clientMsgId"], conn)


async def _send_latency(
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
            await _send_one(system, room, watcher, None)
            t1 = await asyncio.wait_for(first.start, 10)
            await asyncio.wait_for(first.end, 10)
            if i >= 10:
                times.append((t1 - t0) / 1e6)
                if user_times is not None and first.user.done():
                    user_times.append((first.user.result() - t0) / 1e6)
        return times
    finally:
        watcher.close()


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
                    times = sorted(await _send_latency(system, room, cfg.send_trials))
                    rate = await _send_throughput(
                        system, await system.new_room(), cfg.send_throughput, cfg.send_connections
                    )
                    return percentile(times, 50), percentile(times, 99), rate

            value = await _guarded(p99, kind, one())
            a, b, c = value if value is not None else (math.nan,) * 3
            getattr(p50, kind).append(a)
            getattr(p99, kind).append(b)
            getattr(tput, kind).append(c)
            log(f"send rep {rep + 1} {kind}: p50 {a:.2f} ms p99 {b:.2f} ms, {c:,.0f} sends/s")
    return [p50, p99, tput]


# -- 6. give-up time ------------------------------------------------------------------------


def blind_retry_seconds() -> tuple[float, str]:
    """The old policy's wait before it gives up: the sum of its nominal backoff delays.

    Taken from the project's own `ReconnectPolicy` when it is importable, otherwise
    computed from the contract (6 attempts, base 1 s, cap 30 s): Σ min(30, 2^k), k = 0..5.
    """
    try:
        from jupyter_chatbridge.client import ReconnectPolicy

        return ReconnectPolicy().blind_retry_budget(), "ReconnectPolicy().blind_retry_budget()"
    except (ImportError, AttributeError):
        return sum(min(30.0, 1.0 * 2**k) for k in range(6)), "Σ min(30, 2^k) s, k = 0..5"


def _ws_path(system: Ours, session: str) -> str:
    return f"{system.server.base}chatbridge/api/sessions/{session}/ws"


async def _wire_outcome(system: Ours, session: str, origin: bool) -> tuple[str, int]:
    """Raw socket: ('close', code) after an upgrade, or ('http', status) without one."""
    port = system.port
    ws = await WSReader.connect(
        port,
        _ws_path(system, session),
        lambda *a: None,
        origin=f"http://127.0.0.1:{port}" if origin else None,
        extra_headers=system.server.auth_headers(),
        timeout=10,
    )
    try:
        try:
            await asyncio.wait_for(ws.opened, 10)
        except HTTPStatusError as exc:
            return "http", exc.status
        code, _ = await asyncio.wait_for(ws.close_frame, 10)
        return "close", code
    finally:
        ws.close()


def _project_client() -> Any:
    """The project's Python client module, or None where it is not there (yet)."""
    try:
        from jupyter_chatbridge import client

        client.SessionSocket  # noqa: B018
        client.HttpTransport  # noqa: B018
        return client
    except (ImportError, AttributeError):
        return None


async def _client_gives_up(system: Ours, session: str, origin: bool) -> bool:
    """The project's SessionSocket pointed at `session`; True if it reported session-unknown."""
    client = _project_client()
    port = system.port
    transport = client.HttpTransport(
        f"http://127.0.0.1:{port}{system.server.base}",
        token=system.server.auth_headers()["Authorization"].split()[1],
    )
    sock = client.SessionSocket(
        transport, session, origin=f"http://127.0.0.1:{port}" if origin else None
    )
    try:
        await asyncio.wait_for(sock.wait_closed(), 10)
        return bool(sock.session_unknown) and sock.attempts_made == 1
    finally:
        await sock.close()


async def _ws_endpoint_present(system: Ours) -> bool:
    room = await system.new_room()
    try:
        ws = await WSReader.connect(
            system.port,
            _ws_path(system, room),
            lambda *a: None,
            extra_headers=system.server.auth_headers(),
            timeout=10,
        )
        try:
            await asyncio.wait_for(ws.opened, 10)
            return True
        except HTTPStatusError:
            return False
        finally:
            ws.close()
    finally:
        await system.delete_room(room)


async def give_up(cfg: Config, pool: ServerPool) -> list[Row]:
    blind, how = blind_retry_seconds()
    paths = ((True, "browser-style (Origin → 4404)"), (False, "script (no Origin → 404)"))
    client_rows = {
        origin: (
            Row("6 give-up", f"p50 client, {label}", "ms", "lower"),
            Row("6 give-up", f"p99 client, {label}", "ms", "lower", absolute_max=100),
        )
        for origin, label in paths
    }
    wire_rows = {
        origin: Row("6 give-up", f"p99 wire only, {label}", "ms", "lower")
        for origin, label in paths
    }
    blind_row = Row(
        "6 give-up",
        "blind retry of the 6-attempt policy (computed, not waited)",
        "ms",
        "lower",
        ours=[blind * 1000],
        note=f"{how} = {blind:g} s nominal; with its jitter 50{DASH}100% of that.",
    )

    def all_rows() -> list[Row]:
        out: list[Row] = []
        for origin, _ in paths:
            out += [*client_rows[origin], wire_rows[origin]]
        return [*out, blind_row]

    server = await pool.get("ours")
    system = Ours(server)
    have_client = _project_client() is not None
    try:
        if not await _ws_endpoint_present(system):
            for row in all_rows()[:-1]:
                row.status = "pending (no WebSocket endpoint yet)"
            log("give-up: pending (no WebSocket endpoint yet)")
            return all_rows()
        if not have_client:
            for p50, p99 in client_rows.values():
                p50.status = p99.status = "pending (no Python client yet)"
        for rep in range(cfg.reps):
            for origin, label in paths:
                expected = ("close", 4404) if origin else ("http", 404)

                async def one(origin: bool = origin, expected: Any = expected) -> Any:
                    room = await system.new_room()
                    await system.delete_room(room)  # the client is pointed at a deleted session
                    wire, full = [], []
                    for _ in range(cfg.giveup_trials):
                        t0 = time.monotonic_ns()
                        outcome = await _wire_outcome(system, room, origin)
                        wire.append((time.monotonic_ns() - t0) / 1e6)
                        if outcome != expected:
                            raise RuntimeError(f"got {outcome}, contract says {expected}")
                        if have_client:
                            t0 = time.monotonic_ns()
                            ok = await _client_gives_up(system, room, origin)
                            full.append((time.monotonic_ns() - t0) / 1e6)
                            if not ok:
                                raise RuntimeError("the client did not give up at once")
                    return wire, full

                wire, full = await _guarded(wire_rows[origin], "ours", one()) or ([], [])
                wire_rows[origin].ours.append(percentile(sorted(wire), 99))
                p50, p99 = client_rows[origin]
                p50.ours.append(percentile(sorted(full), 50))
                p99.ours.append(percentile(sorted(full), 99))
                log(
                    f"give-up rep {rep + 1} {label}: client p50 {p50.ours[-1]:.2f} ms "
                    f"p99 {p99.ours[-1]:.2f} ms, wire p99 {wire_rows[origin].ours[-1]:.2f} ms"
                )
    finally:
        system.close()
    return all_rows()


# -- 7. store cost ---------------------------------------------------------------------------

# The two stores the store scenario compares: ours as in every other scenario (the
# default SQLite store in the server's temporary data dir), and the same server on
# store_path=:memory: (its figures go in the rows' baseline column).
# (None drops the key, so an --ours-config store_path cannot change the SQLite side.)
STORES: dict[str, dict[str, object]] = {
    "sqlite": {"store_path": None},
    "memory": {"store_path": ":memory:"},
}
MEMORY = ":memory:"  # the baseline's name in the store rows
STORE_TARGET = 0.90  # SQLite fan-out at least 90% of the in-memory store's rate
STORE_P99_TARGET = 1.3  # SQLite send → first event p99 at most 1.3 times :memory:'s (issue 13)


def _store_column(row: Row, store: str) -> list[float]:
    """SQLite is "ours"; the in-memory store is the row's baseline (`floor`) column."""
    if store == "sqlite":
        return row.ours
    assert row.floor is not None
    return row.floor


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
    fan_rows = [
        Row(
            scenario,
            f"fan-out N={n}{X}{events} ev",
            "deliveries/s",
            "higher",
            floor=[],
            min_vs_floor=STORE_TARGET,
            baseline=MEMORY,
            note=note,
        )
        for n, events in cfg.store_fanout
    ]
    cpu_rows = [
        Row(
            scenario,
            f"server CPU per delivery, N={n}{X}{events}",
            "µs",
            "lower",
            floor=[],
            max_vs_floor=round(2 - STORE_TARGET, 2),
            baseline=MEMORY,
            note=note,
        )
        for n, events in cfg.store_fanout
    ]

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
        for row, cpu_row, (n, events) in zip(fan_rows, cpu_rows, cfg.store_fanout, strict=True):
            for store in order:

                async def fan(store: str = store, n: int = n, events: int = events) -> Any:
                    async with fresh("ours", STORES[store]) as system:
                        return await _fanout_measure(
                            system, n, events, cfg.run_timeout, f"store N={n}", f"ours {store}"
                        )

                rate, per = await _guarded(row, store, fan()) or (math.nan, math.nan)
                _store_column(row, store).append(rate)
                _store_column(cpu_row, store).append(per)
                log(
                    f"store rep {rep + 1} fan-out N={n}{X}{events} {store}: "
                    f"{rate:,.0f}/s, {per:.1f} µs"
                )
        for store in order:

            async def send(store: str = store) -> tuple[float, float, float, float]:
                async with fresh("ours", STORES[store]) as system:
                    room = await system.new_room()
                    users: list[float] = []
                    times = await _send_latency(system, room, cfg.store_send_trials, users)
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

            values = await _guarded(p99, store, send()) or (math.nan,) * 4
            for send_row_, value in zip((user50, user99, p50, p99), values, strict=True):
                _store_column(send_row_, store).append(value)
            log(
                f"store rep {rep + 1} send {store}: user_message p50 {values[0]:.2f} "
                f"p99 {values[1]:.2f} ms, message_start p50 {values[2]:.2f} "
                f"p99 {values[3]:.2f} ms"
            )
    out: list[Row] = []
    for row, cpu_row in zip(fan_rows, cpu_rows, strict=True):
        out += [row, cpu_row]
    return [*out, user50, user99, p50, p99]


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
