"""The I/O-free state classes, driven by plain calls and a fake clock."""

from __future__ import annotations

import pytest

from jupyter_chatbridge.clock import FakeScheduler
from jupyter_chatbridge.server.state import (
    CidOwnedElsewhere,
    Connection,
    ConnectionRegistry,
    EventLog,
    ReplayBuffer,
    SendReceipt,
    SessionExists,
    SessionRegistry,
    StreamRegistry,
)

CID = "cid-0b7a3c52-1111-4222-8333-444455556666"


def make_registry(
    clock: FakeScheduler, expired: list[Connection], ttl: float = 60
) -> ConnectionRegistry:
    return ConnectionRegistry(
        clock, inactive_ttl=ttl, replay_buffer_size=10, on_expired=expired.append
    )


# -- connections ---------------------------------------------------------------------------


def test_reconnect_keeps_the_same_state_object() -> None:
    clock, expired = FakeScheduler(), []
    registry = make_registry(clock, expired)
    first, resumed = registry.open(CID, "alice")
    assert not resumed and first.stable
    first.next_frame_id()
    registry.deactivate(CID)
    clock.advance(59.9)
    again, resumed = registry.open(CID, "alice")
    assert resumed and again is first and again.active
    assert again.next_frame_id() == 2
    clock.advance(3600)
    assert expired == [] and registry.get(CID) is first


def test_ttl_expiry_removes_then_calls_back() -> None:
    clock, expired = FakeScheduler(), []
    registry = make_registry(clock, expired)
    conn, _ = registry.open(CID, "alice")
    registry.deactivate(CID)
    clock.advance(60)
    assert expired == [conn] and registry.get(CID) is None


def test_deactivating_twice_keeps_the_first_deadline() -> None:
    clock, expired = FakeScheduler(), []
    registry = make_registry(clock, expired)
    registry.open(CID, "alice")
    registry.deactivate(CID)
    clock.advance(40)
    registry.deactivate(CID)  # a stray second close must not extend or double the timer
    assert clock.pending == 1
    clock.advance(20)
    assert len(expired) == 1


def test_a_stale_timer_cannot_expire_a_newer_registration() -> None:
    clock, expired = FakeScheduler(), []
    registry = make_registry(clock, expired)
    old, _ = registry.open(CID, "alice")
    registry.deactivate(CID)
    clock.advance(60)  # expired
    new, resumed = registry.open(CID, "alice")
    assert not resumed and new is not old
    registry._expire_if_still_inactive(old)  # a timer for the old object firing late
    assert registry.get(CID) is new and expired == [old]


def test_server_assigned_ids_are_dropped_at_once() -> None:
    clock, expired = FakeScheduler(), []
    registry = make_registry(clock, expired)
    conn, _ = registry.open(None, "alice")
    assert conn.id.startswith("conn-") and not conn.stable
    registry.deactivate(conn.id)
    assert expired == [conn] and registry.get(conn.id) is None and clock.pending == 0


def test_a_cid_is_bound_to_its_first_owner() -> None:
    registry = make_registry(FakeScheduler(), [])
    registry.open(CID, "alice")
    with pytest.raises(CidOwnedElsewhere):
        registry.open(CID, "mallory")
    assert registry.get(CID).owner == "alice"
    assert registry.count_owned_by("alice") == 1


# -- streams -------------------------------------------------------------------------------


def test_replace_returns_the_displaced_stream() -> None:
    streams: StreamRegistry[object] = StreamRegistry()
    old, new = object(), object()
    assert streams.replace(CID, old) is None
    assert streams.replace(CID, new) is old
    assert streams.replace(CID, new) is None  # re-registering itself displaces nothing


def test_remove_if_current_ignores_a_stale_close() -> None:
    streams: StreamRegistry[object] = StreamRegistry()
    old, new = object(), object()
    streams.replace(CID, old)
    streams.replace(CID, new)
    assert streams.remove_if_current(CID, old) is False
    assert streams.get(CID) is new
    assert streams.remove_if_current(CID, new) is True
    assert streams.get(CID) is None
    assert streams.remove_if_current(CID, new) is False


# -- sessions ------------------------------------------------------------------------------


def make_sessions() -> SessionRegistry:
    return SessionRegistry(max_events=100, max_receipts=100)


def test_attach_take_over_and_detach() -> None:
    sessions = make_sessions()
    s = sessions.create("s1", 0)
    assert sessions.attach(s, "a") is None
    assert s.driver_client_id == "a:s1"
    assert sessions.attach(s, "a") is None  # idempotent
    assert sessions.attach(s, "b") == "a"
    assert sessions.driven_by("a") == frozenset() and sessions.driven_by("b") == {"s1"}
    assert sessions.detach(s, "a") is False and s.driver == "b"
    assert sessions.detach(s, "b") is True and s.driver is None


def test_release_detaches_only_what_is_still_owned_and_not_suspended() -> None:
    sessions = make_sessions()
    owned, suspended, taken = (sessions.create(x, 0) for x in ("owned", "suspended", "taken"))
    for s in (owned, suspended, taken):
        sessions.attach(s, "a")
        sessions.watch(s, "a")
    assert sessions.suspend(suspended, "a")
    sessions.attach(taken, "b")
    detached = sessions.release_connection("a")
    assert detached == [owned]
    assert (owned.driver, suspended.driver, taken.driver) == (None, "a", "b")
    assert all(s.watchers == set() for s in (owned, suspended, taken))
    assert sessions.watched_by("a") == frozenset()


def test_only_the_driver_can_suspend_and_attach_clears_it() -> None:
    sessions = make_sessions()
    s = sessions.create("s1", 0)
    sessions.attach(s, "a")
    assert sessions.suspend(s, "b") is False and not s.suspended
    assert sessions.suspend(s, "a") and s.suspended
    sessions.attach(s, "b")
    assert not s.suspended


def test_delete_removes_every_relation() -> None:
    sessions = make_sessions()
    s = sessions.create("s1", 0)
    sessions.watch(s, "a")
    sessions.attach(s, "a")
    assert sessions.delete("s1") is s
    assert sessions.watched_by("a") == frozenset() and sessions.driven_by("a") == frozenset()
    assert sessions.delete("s1") is None
    with pytest.raises(SessionExists):
        sessions.create("x", 0)
        sessions.create("x", 0)


# -- replay and event log ------------------------------------------------------------------


def test_replay_since() -> None:
    buffer = ReplayBuffer(3)
    assert buffer.since(0) == ([], False)
    for i in range(1, 6):
        buffer.append(i, b"%d" % i)
    assert [f.frame_id for f in buffer.since(3).frames] == [4, 5]
    assert buffer.since(3).gap is False
    assert buffer.since(2) == (buffer.since(2).frames, False)
    assert [f.frame_id for f in buffer.since(2).frames] == [3, 4, 5]
    result = buffer.since(1)  # frame 2 was dropped
    assert result.gap is True and [f.frame_id for f in result.frames] == [3, 4, 5]
    assert buffer.since(5) == ([], False)
    assert buffer.since(99) == ([], False)
    with pytest.raises(ValueError):
        ReplayBuffer(0)


def test_event_log_seq_after_and_trimming() -> None:
    log = EventLog("s1", max_events=3, max_receipts=2)
    for i in range(5):
        event = log.append("block_delta", {"messageId": "m", "text": str(i)})
    assert event.seq == 5 and log.last_seq == 5 and log.first_seq == 3
    assert (
        event.data == '{"type":"block_delta","sessionId":"s1","seq":5,"messageId":"m","text":"4"}'
    )
    assert [e.seq for e in log.after(0)] == [3, 4, 5]
    assert [e.seq for e in log.after(3)] == [4, 5]
    assert [e.seq for e in log.after(3, limit=1)] == [4]
    assert log.after(5) == []


def test_receipts_are_bounded_oldest_first() -> None:
    log = EventLog("s1", max_events=10, max_receipts=2)
    for i in range(3):
        log.remember(SendReceipt("s1", f"m{i}", i + 1))
    assert log.receipt("m0") is None
    assert log.receipt("m2") == SendReceipt("s1", "m2", 3)


def test_fake_scheduler_runs_due_timers_in_order() -> None:
    clock = FakeScheduler(start=0)
    fired: list[str] = []
    clock.call_later(2, lambda: fired.append("b"))
    clock.call_later(
        1, lambda: (fired.append("a"), clock.call_later(0.5, lambda: fired.append("a2")))
    )
    cancelled = clock.call_later(1.2, lambda: fired.append("x"))
    cancelled.cancel()
    clock.advance(2)
    assert fired == ["a", "a2", "b"] and clock.now() == 2
