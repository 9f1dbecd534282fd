"""The store is fed by the event log and the session registry, as their one sink."""

from __future__ import annotations

from typing import Any

from jupyter_chatbridge.server.state import TRIM_EVERY, LoggedEvent, SendReceipt, SessionRegistry


class RecordingSink:
    """Every write, in the order the state made it."""

    def __init__(self) -> None:
        self.writes: list[tuple[Any, ...]] = []

    def create_session(self, session_id: str, created: float, settings: dict[str, Any]) -> None:
        self.writes.append(("create", session_id, created, settings))

    def delete_session(self, session_id: str) -> None:
        self.writes.append(("delete", session_id))

    def append(self, session_id: str, event: LoggedEvent) -> None:
        self.writes.append(("append", session_id, event.seq))

    def remember(self, receipt: SendReceipt) -> None:
        self.writes.append(("remember", receipt))

    def trim(self, session_id: str, first_event_seq: int, first_receipt_seq: int) -> None:
        self.writes.append(("trim", session_id, first_event_seq, first_receipt_seq))


def registry(sink: RecordingSink, **limits: int) -> SessionRegistry:
    sizes = {"max_events": 100, "max_receipts": 100, **limits}
    return SessionRegistry(**sizes, sink=sink, wall_clock=lambda: 1234.5)


def test_every_durable_change_reaches_the_sink_in_order() -> None:
    sink = RecordingSink()
    sessions = registry(sink)
    session = sessions.create("s1", now=0.0, settings={"a": 1})
    event = session.log.append("user_message", {"clientMsgId": "m1", "text": "hi"})
    receipt = session.log.accept(event, "m1")
    session.log.append("message_start", {})
    sessions.delete("s1")
    sessions.delete("s1")  # already gone: nothing more
    assert sink.writes == [
        ("create", "s1", 1234.5, {"a": 1}),  # wall-clock time, not the scheduler's
        ("append", "s1", 1),
        ("remember", receipt),
        ("append", "s1", 2),
        ("delete", "s1"),
    ]


def test_the_sink_is_trimmed_to_the_window_every_trim_every_events() -> None:
    sink = RecordingSink()
    session = registry(sink, max_events=10, max_receipts=3).create("s1", now=0.0)
    for i in range(TRIM_EVERY):
        event = session.log.append("user_message", {"clientMsgId": f"m{i}"})
        session.log.accept(event, f"m{i}")
    trims = [w for w in sink.writes if w[0] == "trim"]
    # At the append of seq 256, the window memory keeps: the last 10 events, and the
    # last 3 receipts (seqs 253 to 255; 256's is remembered just after).
    assert trims == [("trim", "s1", TRIM_EVERY - 9, TRIM_EVERY - 3)]


def test_a_restored_session_writes_nothing_but_a_trim_to_its_window() -> None:
    sink = RecordingSink()
    stored = [LoggedEvent(seq, "block_delta", "{}") for seq in range(1, 6)]
    receipts = [SendReceipt("s1", "m1", 1)]
    registry(sink, max_events=3).restore("s1", 0.0, {}, stored, 5, receipts)
    assert sink.writes == [("trim", "s1", 3, 1)]


def test_a_retracted_send_is_written_again_with_its_seq_when_retried() -> None:
    sink = RecordingSink()
    session = registry(sink).create("s1", now=0.0)
    event = session.log.append("user_message", {"clientMsgId": "m1"})
    receipt = session.log.accept(event, "m1")
    session.log.append("message_start", {})
    session.log.retract("m1")  # its commit failed
    assert session.log.receipt("m1") is None and session.log.is_retracted("m1")
    sink.writes.clear()
    assert session.log.resubmit("m1") == receipt
    assert sink.writes == [("append", "s1", 1), ("remember", receipt)]
    assert session.log.receipt("m1") == receipt and not session.log.is_retracted("m1")
    assert session.log.resubmit("m1") is None  # nothing retracted any more
