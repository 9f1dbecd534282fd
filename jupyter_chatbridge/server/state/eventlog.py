"""A session's event log (contiguous `seq`) and its send receipts (dedup by clientMsgId)."""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable
from typing import Any, NamedTuple

from ...protocol import dumps


class LoggedEvent(NamedTuple):
    """One session event: its seq, type and one-line JSON, serialised once for every reader."""

    seq: int
    type: str
    data: str


class SendReceipt(NamedTuple):
    """What an accepted send was answered; returned again for a duplicate."""

    session_id: str
    client_msg_id: str
    seq: int


class EventLog:
    """The ordered events of one session, keeping at most `max_events` (oldest trimmed)."""

    def __init__(self, session_id: str, *, max_events: int, max_receipts: int) -> None:
        self.session_id = session_id
        self._events: deque[LoggedEvent] = deque(maxlen=max_events)
        self._last_seq = 0
        self._receipts: OrderedDict[str, SendReceipt] = OrderedDict()
        self._max_receipts = max_receipts

    @property
    def last_seq(self) -> int:
        """The seq of the newest event, 0 before the first."""
        return self._last_seq

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
        self._last_seq = last_seq
        self._receipts.clear()
        for receipt in sorted(receipts, key=lambda r: r.seq):
            self.remember(receipt)

    def append(self, event_type: str, fields: dict[str, Any]) -> LoggedEvent:
        """Add an event with the next seq; `fields` are the type-specific members."""
        self._last_seq += 1
        body = {"type": event_type, "sessionId": self.session_id, "seq": self._last_seq, **fields}
        event = LoggedEvent(self._last_seq, event_type, dumps(body))
        self._events.append(event)
        return event

    def after(self, seq: int, limit: int | None = None) -> list[LoggedEvent]:
        """Events with seq > `seq`, oldest first, at most `limit` of them."""
        if not self._events or seq >= self._last_seq:
            return []
        start = max(0, seq - self._events[0].seq + 1)
        stop = len(self._events) if limit is None else min(len(self._events), start + limit)
        return [self._events[i] for i in range(start, stop)]

    def receipt(self, client_msg_id: str) -> SendReceipt | None:
        """The receipt of an earlier accepted send with this id, if still remembered."""
        return self._receipts.get(client_msg_id)

    def remember(self, receipt: SendReceipt) -> None:
        """Keep a receipt for dedup; the oldest are forgotten past `max_receipts`."""
        self._receipts[receipt.client_msg_id] = receipt
        while len(self._receipts) > self._max_receipts:
            self._receipts.popitem(last=False)
