"""A session's event log (contiguous `seq`) and its send receipts (dedup by clientMsgId).

The log is the one place a session's history changes, so it is also the one
place that feeds the durable store: every append, trim and receipt is reported
to its `LogSink` (the store's write queue), never written to the store by hand.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple, Protocol

from ...protocol import dumps, sse_payload

# The sink's copy is trimmed to the in-memory window every this many events of a
# session: one cheap range delete now and then instead of one per event.
TRIM_EVERY = 256


class LoggedEvent:
    """One session event: its seq, type and one-line JSON, serialised once for every reader.

    `payload`, its SSE framing, is made once too, so every stream and replay buffer
    that holds it shares one bytes object: N watchers of a big session cost N
    references to its history, never N copies.
    """

    __slots__ = ("_payload", "data", "seq", "type")

    def __init__(self, seq: int, type: str, data: str) -> None:
        self.seq = seq
        self.type = type
        self.data = data
        self._payload: bytes | None = None

    @property
    def payload(self) -> bytes:
        """The event as one SSE frame body (`event:` and `data:` lines)."""
        payload = self._payload
        if payload is None:
            payload = self._payload = sse_payload(self.type, self.data)
        return payload

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LoggedEvent):
            return NotImplemented
        return (self.seq, self.type, self.data) == (other.seq, other.type, other.data)

    def __hash__(self) -> int:
        return hash((self.seq, self.type, self.data))

    def __repr__(self) -> str:
        return f"LoggedEvent(seq={self.seq!r}, type={self.type!r}, data={self.data!r})"


class SendReceipt(NamedTuple):
    """What an accepted send was answered; returned again for a duplicate."""

    session_id: str
    client_msg_id: str
    seq: int


class LogSink(Protocol):
    """Where a log reports its changes, in the order they happen (the store)."""

    def append(self, session_id: str, event: LoggedEvent) -> None:
        """An event was logged."""

    def remember(self, receipt: SendReceipt) -> None:
        """A send was accepted with this receipt."""

    def trim(self, session_id: str, first_event_seq: int, first_receipt_seq: int) -> None:
        """Everything before these seqs is no longer kept."""


class NoSink:
    """A sink that records nothing (a log used on its own)."""

    def append(self, session_id: str, event: LoggedEvent) -> None:
        pass

    def remember(self, receipt: SendReceipt) -> None:
        pass

    def trim(self, session_id: str, first_event_seq: int, first_receipt_seq: int) -> None:
        pass

    def create_session(self, session_id: str, created: float, settings: dict[str, Any]) -> None:
        pass

    def delete_session(self, session_id: str) -> None:
        pass


class EventLog:
    """The ordered events of one session, keeping at most `max_events` (oldest trimmed).

    A send's receipt answers duplicates from the moment it is `accept`ed (its
    writes go to the sink with its event). If their commit fails, the caller
    `retract`s it: it then answers nothing until a retry `resubmit`s the same
    event and receipt, so no `duplicate: true` is ever given for a message the
    store may have lost.
    """

    def __init__(
        self,
        session_id: str,
        *,
        max_events: int,
        max_receipts: int,
        sink: LogSink | None = None,
    ) -> None:
        self.session_id = session_id
        self._events: deque[LoggedEvent] = deque(maxlen=max_events)
        self._last_seq = 0
        self._receipts: OrderedDict[str, SendReceipt] = OrderedDict()
        self._retracted: OrderedDict[str, tuple[SendReceipt, LoggedEvent]] = OrderedDict()
        self._max_receipts = max_receipts
        self._sink: LogSink = sink if sink is not None else NoSink()
        self.shown_seq = 0
        """The newest seq that anyone may see (committed by the store): the fan-out
        advances it; history, replays and `lastSeq` never go past it."""

    @property
    def last_seq(self) -> int:
        """The seq of the newest event, 0 before the first."""
        return self._last_seq

    @property
    def retained(self) -> Sequence[LoggedEvent]:
        """Every event held, oldest first (shown or not): a view, not a copy."""
        return self._events

    @property
    def first_seq(self) -> int:
        """The seq of the oldest event still held (last_seq + 1 when empty)."""
        return self._events[0].seq if self._events else self._last_seq + 1

    @property
    def first_receipt_seq(self) -> int:
        """The seq of the oldest receipt still remembered (last_seq + 1 when none).

        Receipts are remembered in seq order, so the oldest is the first.
        """
        for receipt in self._receipts.values():
            return receipt.seq
        return self._last_seq + 1

    def load(
        self, events: Iterable[LoggedEvent], last_seq: int, receipts: Iterable[SendReceipt]
    ) -> None:
        """Restore what a store kept: the retained events, the last seq and the receipts.

        Only the newest contiguous run of events ending at `last_seq` is kept, so
        `after` stays exact even if the stored tail had a hole; limits apply as usual.
        Nothing is reported to the sink (it already holds all this) but a trim to
        this log's window, since the limits may have shrunk since.
        """
        tail: list[LoggedEvent] = []
        expected = last_seq
        for event in reversed(list(events)):
            if event.seq != expected or len(tail) == self._events.maxlen:
                break
            tail.append(event)
            expected -= 1
        self._events.clear()
        self._events.extend(reversed(tail))
        self._last_seq = self.shown_seq = last_seq  # what a store held was committed
        self._receipts.clear()
        for receipt in sorted(receipts, key=lambda r: r.seq):
            self.remember(receipt)
        self._report_trim()

    def append(self, event_type: str, fields: dict[str, Any]) -> LoggedEvent:
        """Add an event with the next seq; `fields` are the type-specific members."""
        self._last_seq += 1
        body = {"type": event_type, "sessionId": self.session_id, "seq": self._last_seq, **fields}
        event = LoggedEvent(self._last_seq, event_type, dumps(body))
        self._events.append(event)
        self._sink.append(self.session_id, event)
        if event.seq % TRIM_EVERY == 0:
            self._report_trim()
        return event

    def ingest(self, event: LoggedEvent) -> None:
        """Add an event another writer logged with its seq (read back from a shared
        store, which holds it already): nothing goes to the sink, and it is shown."""
        self._events.append(event)
        self._last_seq = self.shown_seq = event.seq

    def after(self, seq: int, limit: int | None = None) -> list[LoggedEvent]:
        """Events with seq > `seq`, oldest first, at most `limit` of them (shown or not)."""
        return self._between(seq, self._last_seq, limit)

    def shown_after(self, seq: int, limit: int | None = None) -> list[LoggedEvent]:
        """Like `after`, but only events already shown: what clients may see."""
        return self._between(seq, self.shown_seq, limit)

    def _between(self, seq: int, newest: int, limit: int | None) -> list[LoggedEvent]:
        if not self._events or seq >= newest:
            return []
        first = self._events[0].seq
        start = max(0, seq - first + 1)
        stop = newest - first + 1
        if limit is not None:
            stop = min(stop, start + limit)
        return list(itertools.islice(self._events, start, stop))

    # -- receipts -------------------------------------------------------------------

    def receipt(self, client_msg_id: str) -> SendReceipt | None:
        """The receipt of an earlier accepted send with this id, if still remembered."""
        return self._receipts.get(client_msg_id)

    def accept(self, event: LoggedEvent, client_msg_id: str) -> SendReceipt:
        """A send became `event`: remember its receipt and hand it to the sink."""
        receipt = SendReceipt(self.session_id, client_msg_id, event.seq)
        self.remember(receipt)
        self._sink.remember(receipt)
        return receipt

    def retract(self, client_msg_id: str) -> None:
        """The commit of this send's writes failed: stop answering duplicates with it."""
        receipt = self._receipts.pop(client_msg_id, None)
        if receipt is None:
            return
        found = self.after(receipt.seq - 1, 1)
        if found and found[0].seq == receipt.seq:
            self._retracted[client_msg_id] = (receipt, found[0])
            while len(self._retracted) > self._max_receipts:
                self._retracted.popitem(last=False)

    def is_retracted(self, client_msg_id: str) -> bool:
        """True while a send's receipt is withdrawn after a failed commit."""
        return client_msg_id in self._retracted

    def resubmit(self, client_msg_id: str) -> SendReceipt | None:
        """A retry of a retracted send: hand its event and receipt to the sink again
        (the writes are idempotent) and remember the receipt; None if there is none."""
        retracted = self._retracted.pop(client_msg_id, None)
        if retracted is None:
            return None
        receipt, event = retracted
        self._sink.append(self.session_id, event)
        self.remember(receipt)
        # Back in seq order, which `first_receipt_seq` (and so every trim) relies on.
        self._receipts = OrderedDict(sorted(self._receipts.items(), key=lambda kv: kv[1].seq))
        self._sink.remember(receipt)
        return receipt

    def remember(self, receipt: SendReceipt) -> None:
        """Keep a receipt for dedup; the oldest are forgotten past `max_receipts`."""
        self._receipts[receipt.client_msg_id] = receipt
        while len(self._receipts) > self._max_receipts:
            self._receipts.popitem(last=False)

    def _report_trim(self) -> None:
        self._sink.trim(self.session_id, self.first_seq, self.first_receipt_seq)
