"""What a chat panel shows, as plain state with no I/O and no widgets.

`ChatView` is fed what a client observes (session events, the outbox's
`send_*` events, stream status changes, a lost session) through plain method
calls, and answers what to show: the message list with each sent message's
delivery state, "thinking…", the connection status line and a banner. The
notebook `ChatWidget` renders it with ipywidgets; tests drive it directly.

What the conversation shows (delivery states, answers, "thinking", seq order,
duplicates, gaps, a rewound server) is the transcript reducer of the client rules
(`protocol.transcript`, docs/client-rules.md), the same one `ask()` and the page
use; this module adds what only a panel has: the connection status line, the
banners, the Stops it asked for, and what to redraw. A banner is cleared only by the
resolution of its own cause (the session is started again; the connection is back).

No I/O, and nothing here imports tornado.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from ..protocol.outbox_machine import OutboxEvent
from ..protocol.rules import MAX_RECONNECT_ATTEMPTS
from ..protocol.status import ConnectionStatus, StatusChange
from ..protocol.transcript import Delivery, Message, Touched, Transcript

__all__ = ["Banner", "Changes", "ChatView", "Delivery", "Entry", "StopRequest"]

# Statuses after which no event can arrive until the user acts (Reconnect).
_DEAD_STATUSES: Final = frozenset(
    {ConnectionStatus.OFFLINE, ConnectionStatus.FAILED, ConnectionStatus.CLOSED}
)
# Why this panel no longer drives its session (`detached` frame), in words. Take over undoes
# any reason but `session_ended`, which the session-gone banner says instead.
_DETACHED_WORDS: Final = {
    "taken_over": "another client now drives this session",
    "expired": "this panel was away too long and no longer drives this session",
}
_NOT_DRIVING: Final = "this panel no longer drives this session"

# One item of the message list: the reducer's message, drawn as it is.
Entry = Message


BannerKind = Literal["server_unavailable", "session_unknown", "connection_refused", "setup_failed"]
# Which banner shows when several causes hold at once. A server that cannot serve chat at
# all first: what it says is the cause of everything else (404s, failed watches).
_BANNER_PRIORITY: Final[tuple[BannerKind, ...]] = (
    "server_unavailable",
    "session_unknown",
    "connection_refused",
    "setup_failed",
)


@dataclass(frozen=True)
class Banner:
    """A problem with the whole panel, and the action that resolves it."""

    kind: BannerKind
    text: str
    action: str


@dataclass
class StopRequest:
    """A Stop this panel asked for one answer: still on its way, or why it failed."""

    pending: bool = True
    error: str | None = None


@dataclass
class Changes:
    """What changed since the last `ChatView.take_changes`, so a renderer redraws only that."""

    entries: set[str] = field(default_factory=set)
    order: bool = False
    chrome: bool = False  # status line, banner, thinking, input hint

    def __bool__(self) -> bool:
        return bool(self.entries) or self.order or self.chrome


class ChatView:
    """The state of a chat panel on one session; every method is a plain, synchronous call.

    Not thread-safe: call it from one thread (the widget calls it only from its
    client's event loop).
    """

    def __init__(self, session_id: str, *, max_attempts: int = MAX_RECONNECT_ATTEMPTS) -> None:
        self.session_id = session_id
        self.status = ConnectionStatus.IDLE
        self.status_change = StatusChange(ConnectionStatus.IDLE)
        self.max_attempts = max_attempts
        self.detached_reason: str | None = None
        self.input_error: str | None = None
        self.transcript = Transcript(session_id)
        self._banners: dict[BannerKind, Banner] = {}
        self._stops: dict[str, StopRequest] = {}  # by answer key
        self._changes = Changes(chrome=True)

    @property
    def generation(self) -> int:
        """How many times the session was started again under the same id."""
        return self.transcript.generation

    @property
    def last_seq(self) -> int:
        """The last seq shown of the live session (0: none yet)."""
        return self.transcript.last_seq or 0

    @property
    def gap(self) -> dict[str, int] | None:
        """Seqs the view misses (`after` < seq < `before`): fetch them from history."""
        return self.transcript.gap

    # -- inputs: the outbox and the session ------------------------------------------------

    def outbox_event(self, event: OutboxEvent) -> None:
        """A `send_pending`, `send_failed` or `send_accepted` for a message of this session."""
        if event.session_id != self.session_id:
            return
        self._note(self.transcript.apply(event.transcript_input()))
        if event.type == "send_pending":
            self.input_error = None
        elif event.type == "send_failed" and not event.will_retry:
            message = self.transcript.own.get(event.client_msg_id)
            if (
                message is not None
                and message.delivery is Delivery.FAILED
                and event.status == 404
                and "session_unknown" in (event.error or "")
            ):
                self.session_lost("session_unknown")

    def session_event(self, event: Mapping[str, Any]) -> None:
        """A session event (`user_message`, `message_start`, `block_delta`, …)."""
        if event.get("sessionId") != self.session_id:
            return
        self._apply({"kind": "event", "event": event})

    def history(self, events: list[dict[str, Any]]) -> None:
        """History's answer for the `gap`: fills it (what history lacks is skipped)."""
        self._apply({"kind": "history", "events": events})

    def rewound(self, last_seq: int) -> None:
        """The server's history ends at `last_seq`, before what was shown: it lost the rest."""
        self._note(self.transcript.apply({"kind": "watched", "lastSeq": last_seq}))

    def _apply(self, item: Mapping[str, Any]) -> None:
        ended = self.transcript.ended
        self._note(self.transcript.apply(item))
        if self.transcript.ended == "session_ended" and ended is None:
            self.session_lost("session_ended")

    def _note(self, touched: Touched) -> None:
        self._changes.entries |= touched.keys
        self._changes.order = self._changes.order or touched.reordered
        self._changes.chrome = True

    # -- inputs: Stop ----------------------------------------------------------------------

    def stop_requested(self, key: str) -> bool:
        """The user asked to stop this answer. False (send nothing) when it has ended or a
        Stop of it is already on its way: repeated clicks make one request."""
        answer = self.transcript.messages.get(key)
        request = self._stops.get(key)
        if answer is None or answer.role != "agent" or answer.done:
            return False
        if request is not None and request.pending:
            return False
        self._stops[key] = StopRequest()
        self._touch_entry(key)
        return True

    def stop_answered(self, key: str, reason: str) -> None:
        """The server's answer to that Stop: `stopped` (the answer's end is on its way, if
        not here already), or `not_running` / `already_ended` (it had ended by itself)."""
        request = self._stops.get(key)
        if request is not None:
            request.pending, request.error = reason == "stopped", None
            self._touch_entry(key)

    def stop_failed(self, key: str, error: str) -> None:
        """That Stop did not reach the server, or the server refused it: said next to the
        answer, and Stop can be pressed again."""
        self._stops[key] = StopRequest(pending=False, error=error)
        self._touch_entry(key)

    def _touch_entry(self, key: str) -> None:
        self._changes.entries.add(key)
        self._changes.chrome = True

    # -- inputs: the connection -----------------------------------------------------------

    def status_changed(self, change: StatusChange) -> None:
        """The event stream's status changed."""
        self.status = change.status
        self.status_change = change
        if change.max_attempts:
            self.max_attempts = change.max_attempts
        if change.unavailable is not None:
            self._banners["server_unavailable"] = Banner(
                "server_unavailable",
                f"The server cannot serve chat: {change.unavailable}",
                "Reconnect",
            )
        if change.status is ConnectionStatus.CONNECTED:
            # Evidence about the connection itself: it works again.
            self._banners.pop("connection_refused", None)
            self._banners.pop("server_unavailable", None)
        elif change.status is ConnectionStatus.FAILED:
            self._banners["connection_refused"] = Banner(
                "connection_refused",
                f"The server refused the connection ({change.error}). "
                "Check server_url and token, then reconnect.",
                "Reconnect",
            )
        self._changes.chrome = True

    def session_lost(self, reason: str) -> None:
        """The session no longer exists (`session_ended`, or 404 `session_unknown`)."""
        if self.transcript.ended is None:
            self.transcript.apply({"kind": "lost", "reason": reason})
        why = "it was deleted" if reason == "session_ended" else "the server does not know it"
        self._banners["session_unknown"] = Banner(
            "session_unknown",
            f"Session “{self.session_id}” no longer exists: {why}.",
            "Start a new session",
        )
        self._changes.chrome = True

    def setup_failed(self, error: str) -> None:
        """Opening the session failed for a reason other than the connection."""
        self._banners["setup_failed"] = Banner(
            "setup_failed", f"Could not open session “{self.session_id}”: {error}", "Try again"
        )
        self._changes.chrome = True

    def session_opened(self) -> None:
        """The session is watched and driven from here: clears what opening it resolves."""
        self.session_watched()
        self.detached_reason = None

    def session_watched(self) -> None:
        """The session is watched again (a reconnect): opening it no longer fails."""
        self._banners.pop("setup_failed", None)
        self._changes.chrome = True

    def detached(self, reason: str) -> None:
        """This client no longer drives the session (`detached` frame)."""
        self.detached_reason = reason
        self._changes.chrome = True

    def send_refused(self, error: str) -> None:
        """A message was not even queued (e.g. the outbox is full): say so at the input."""
        self.input_error = error
        self._changes.chrome = True

    def new_session(self) -> None:
        """The session was started again under the same id: a fresh conversation follows."""
        self._banners.pop("session_unknown", None)
        self._note(
            self.transcript.apply(
                {"kind": "new_session", "text": f"New session “{self.session_id}”"}
            )
        )

    # -- outputs ---------------------------------------------------------------------------

    @property
    def entries(self) -> list[Entry]:
        """The message list in display order."""
        return self.transcript.ordered()

    def entry(self, key: str) -> Entry:
        """One entry by key."""
        return self.transcript.messages[key]

    def answer(self, message_id: str) -> Entry | None:
        """The live session's answer with this messageId, once it started."""
        for entry in self.transcript.messages.values():
            if entry.message_id == message_id and entry.generation == self.generation:
                return entry
        return None

    def own(self, client_msg_id: str) -> Entry | None:
        """The entry of a message sent from this view."""
        return self.transcript.own.get(client_msg_id)

    @property
    def unfinished(self) -> list[Entry]:
        """Messages sent from here that are still pending or retrying, in send order."""
        return [
            e
            for e in sorted(self.transcript.own.values(), key=lambda e: e.order)
            if e.delivery in (Delivery.PENDING, Delivery.RETRYING)
        ]

    @property
    def stoppable(self) -> Entry | None:
        """The answer Stop would stop: the newest one streaming, while the connection and
        the session live (None: no Stop to offer)."""
        if self.status in _DEAD_STATUSES or self.session_gone:
            return None
        messages = self.transcript.messages
        streaming = [messages[key] for key in self.transcript.open_answers if key in messages]
        return max((e for e in streaming if not e.done), key=lambda e: e.order, default=None)

    def stopping(self, key: str) -> bool:
        """A Stop of this answer is on its way and the answer has not ended yet."""
        request = self._stops.get(key)
        answer = self.transcript.messages.get(key)
        return request is not None and request.pending and answer is not None and not answer.done

    def stop_error(self, key: str) -> str | None:
        """Why this panel's Stop of this answer failed (None once it was stopped after all)."""
        request = self._stops.get(key)
        answer = self.transcript.messages.get(key)
        if request is None or (answer is not None and answer.ended == "stopped"):
            return None
        return request.error

    @property
    def banner(self) -> Banner | None:
        """The banner to show, if any."""
        for kind in _BANNER_PRIORITY:
            if kind in self._banners:
                return self._banners[kind]
        return None

    @property
    def session_gone(self) -> bool:
        """True while the session-unknown banner stands."""
        return "session_unknown" in self._banners

    @property
    def thinking(self) -> bool:
        """True while the agent works (or is about to) on a message of the live session."""
        if self.status in _DEAD_STATUSES or self.session_gone:
            return False
        return self.transcript.thinking

    @property
    def status_line(self) -> str:
        """The connection status, short: "connected", "reconnecting 2 of 6…", "offline"."""
        change = self.status_change
        if self.status is ConnectionStatus.RECONNECTING:
            return f"reconnecting {change.attempt} of {change.max_attempts or self.max_attempts}…"
        if self.status is ConnectionStatus.OFFLINE:
            return "offline"
        if self.status is ConnectionStatus.FAILED:
            return "connection refused"
        if self.status in (ConnectionStatus.IDLE, ConnectionStatus.CONNECTING):
            return "connecting…"
        return str(self.status.value)

    @property
    def status_detail(self) -> str | None:
        """A longer explanation of the status, when there is one."""
        change = self.status_change
        if self.status is ConnectionStatus.RECONNECTING and change.retry_in is not None:
            return f"next try in {change.retry_in:.0f} s ({change.error})"
        if self.status is ConnectionStatus.OFFLINE:
            return f"gave up after {self.max_attempts} attempts ({change.error})"
        if self._can_take_over:
            return _DETACHED_WORDS.get(self.detached_reason or "", _NOT_DRIVING)
        return None

    @property
    def status_action(self) -> str | None:
        """The action offered next to the status line: "Reconnect", "Take over" or None."""
        if self.status in (ConnectionStatus.OFFLINE, ConnectionStatus.FAILED):
            return "Reconnect"
        if self._can_take_over and self.status is ConnectionStatus.CONNECTED:
            return "Take over"
        return None

    @property
    def _can_take_over(self) -> bool:
        """Detached for a reason that attaching again undoes. One status per cause: a gone
        session shows only its banner and its action, never a Take over that cannot work."""
        reason = self.detached_reason
        return reason is not None and reason != "session_ended" and not self.session_gone

    def take_changes(self) -> Changes:
        """What changed since the last call (and forget it)."""
        changes, self._changes = self._changes, Changes()
        return changes

    def summary(self) -> dict[str, Any]:
        """A plain snapshot of everything shown, for tests, notebooks and logs."""
        messages: list[dict[str, Any]] = []
        for entry in self.entries:
            item: dict[str, Any] = {"role": entry.role, "text": entry.text}
            if entry.seq is not None:
                item["seq"] = entry.seq
            if entry.delivery is not None:
                item["delivery"] = entry.delivery.value
            if entry.role == "agent":
                item["done"] = entry.done
                item["ended"] = entry.ended
                stop_error = self.stop_error(entry.key)
                if stop_error:
                    item["stop_error"] = stop_error
            if entry.error:
                item["error"] = entry.error
            messages.append(item)
        banner = self.banner
        return {
            "session": self.session_id,
            "status": self.status_line,
            "thinking": self.thinking,
            "banner": banner.text if banner else None,
            "messages": messages,
        }
