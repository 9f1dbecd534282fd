"""Scenario 4, resume: a reconnect that replays what was missed (Last-Event-ID, and the
afterSeq gap path), and a 10,000-event re-watch on the default store and on :memory:."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from .client import HTTPConn
from .common import percentile
from .harness import (
    MEMORY,
    STORES,
    Config,
    EndCounter,
    fresh,
    guarded,
    log,
    store_column,
)
from .report import Row
from .servers import ServerPool
from .systems import Ours, new_cid


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

            times = await guarded(p99, "ours", one())
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

            times = sorted(await guarded(rows[1], store, one()) or [])
            for row, q in zip(rows, (50, 99), strict=True):
                store_column(row, store).append(percentile(times, q))
            log(
                f"resume {missed:,} missed rep {rep + 1} {store}: "
                f"p50 {percentile(times, 50):.1f} p99 {percentile(times, 99):.1f} ms"
            )
    return rows
