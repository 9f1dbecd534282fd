"""The chat panel's view state, driven by plain calls: no server, no widgets, no threads."""

from __future__ import annotations

from typing import Any

import pytest

from jupyter_chatbridge.client.outbox import OutboxEvent
from jupyter_chatbridge.client.stream import ConnectionStatus, StatusChange
from jupyter_chatbridge.ui.chatview import ChatView, Delivery
from jupyter_chatbridge.ui.panel import entry_html, status_html

SID = "demo"


class Session:
    """Feeds a view the events a session would produce, numbering them."""

    def __init__(self, view: ChatView) -> None:
        self.view = view
        self.seq = 0

    def event(self, kind: str, **fields: Any) -> int:
        self.seq += 1
        self.view.session_event({"type": kind, "sessionId": SID, "seq": self.seq, **fields})
        return self.seq

    def user(self, cmid: str, text: str = "hi") -> int:
        return self.event("user_message", clientMsgId=cmid, text=text, connectionId=None)

    def answer(self, reply_to: int | None, text: str = "ok", mid: str | None = None) -> None:
        mid = mid or f"msg-{self.seq + 1}"
        extra = {"replyTo": reply_to} if reply_to is not None else {}
        self.event("message_start", messageId=mid, **extra)
        self.event("block_delta", messageId=mid, text=text)
        self.event("message_end", messageId=mid)


def pending(cmid: str, text: str = "hi") -> OutboxEvent:
    return OutboxEvent("send_pending", SID, cmid, text)


def accepted(cmid: str, seq: int, text: str = "hi", duplicate: bool = False) -> OutboxEvent:
    return OutboxEvent("send_accepted", SID, cmid, text, seq=seq, duplicate=duplicate)


def failed(
    cmid: str, *, will_retry: bool, status: int | None = 500, error: str = "HTTP 500"
) -> OutboxEvent:
    return OutboxEvent(
        "send_failed",
        SID,
        cmid,
        "hi",
        will_retry=will_retry,
        status=status,
        error=error,
        attempt=1,
        retry_in=3.0 if will_retry else None,
    )


@pytest.fixture
def view() -> ChatView:
    view = ChatView(SID)
    view.status_changed(StatusChange(ConnectionStatus.CONNECTED))
    return view


def delivery(view: ChatView, cmid: str) -> Delivery | None:
    entry = view.own(cmid)
    assert entry is not None
    return entry.delivery


def test_a_message_goes_pending_then_delivered_and_thinking_follows_the_answer(
    view: ChatView,
) -> None:
    session = Session(view)
    assert not view.thinking
    view.outbox_event(pending("m1"))
    assert delivery(view, "m1") is Delivery.PENDING
    assert view.thinking  # at once, before the server answered
    seq = session.user("m1")
    view.outbox_event(accepted("m1", seq))
    assert delivery(view, "m1") is Delivery.DELIVERED
    assert view.thinking  # delivered, not yet answered
    session.answer(seq, "Echo: hi")
    assert not view.thinking
    assert [(m["role"], m["text"]) for m in view.summary()["messages"]] == [
        ("user", "hi"),
        ("agent", "Echo: hi"),
    ]


def test_a_receipt_after_the_answer_does_not_bring_thinking_back(view: ChatView) -> None:
    # The answer streamed in before the HTTP answer to the send was read (or a retry
    # after a lost answer is acknowledged as a duplicate): thinking must stay off.
    session = Session(view)
    view.outbox_event(pending("m1"))
    seq = session.user("m1")
    session.answer(seq)
    view.outbox_event(accepted("m1", seq, duplicate=True))
    assert not view.thinking


def test_a_retry_warning_is_cleared_only_by_evidence_about_its_own_message(
    view: ChatView,
) -> None:
    session = Session(view)
    view.outbox_event(pending("m1"))
    view.outbox_event(failed("m1", will_retry=True))
    assert delivery(view, "m1") is Delivery.RETRYING
    # Everything unrelated: another message's whole life, an answer, a reconnect.
    view.outbox_event(pending("m2"))
    seq2 = session.user("m2")
    view.outbox_event(accepted("m2", seq2))
    session.answer(seq2)
    view.status_changed(StatusChange(ConnectionStatus.RECONNECTING, 1, 6, 1.0))
    view.status_changed(StatusChange(ConnectionStatus.CONNECTED))
    view.session_opened()
    assert delivery(view, "m1") is Delivery.RETRYING
    assert view.own("m1").error == "HTTP 500"  # type: ignore[union-attr]
    # Its own evidence: its user_message in the session.
    session.user("m1")
    assert delivery(view, "m1") is Delivery.DELIVERED
    assert view.own("m1").error is None  # type: ignore[union-attr]


def test_a_final_failure_offers_retry_and_clears_thinking(view: ChatView) -> None:
    session = Session(view)
    view.outbox_event(pending("m1"))
    assert view.thinking
    view.outbox_event(failed("m1", will_retry=False))
    assert delivery(view, "m1") is Delivery.FAILED
    assert view.own("m1").retry_offered  # type: ignore[union-attr]
    assert not view.thinking
    # Unrelated traffic leaves the failure standing.
    view.outbox_event(pending("m2"))
    session.answer(session.user("m2"))
    assert delivery(view, "m1") is Delivery.FAILED
    # The user's Retry: pending again, last in the list.
    view.outbox_event(pending("m1"))
    assert delivery(view, "m1") is Delivery.PENDING
    assert view.entries[-1].client_msg_id == "m1"
    assert view.thinking


def test_a_message_the_server_refuses_is_not_offered_a_retry(view: ChatView) -> None:
    view.outbox_event(pending("m1"))
    view.outbox_event(failed("m1", will_retry=False, status=413, error="too large (too_large)"))
    assert not view.own("m1").retry_offered  # type: ignore[union-attr]


def test_delivery_evidence_wins_over_a_later_failure_of_the_same_message(
    view: ChatView,
) -> None:
    # Accepted, but the HTTP answer was lost: its user_message already arrived.
    session = Session(view)
    view.outbox_event(pending("m1"))
    session.user("m1")
    view.outbox_event(failed("m1", will_retry=True))
    view.outbox_event(failed("m1", will_retry=False))
    assert delivery(view, "m1") is Delivery.DELIVERED


def test_a_404_on_send_shows_the_session_unknown_banner(view: ChatView) -> None:
    view.outbox_event(pending("m1"))
    view.outbox_event(
        failed(
            "m1",
            will_retry=False,
            status=404,
            error="session not found (session_unknown)",
        )
    )
    assert delivery(view, "m1") is Delivery.FAILED
    assert view.banner is not None and view.banner.kind == "session_unknown"
    assert view.banner.action == "Start a new session"


def test_a_deleted_session_shows_the_banner_clears_thinking_and_can_start_again(
    view: ChatView,
) -> None:
    session = Session(view)
    view.outbox_event(pending("m1"))
    seq = session.user("m1")
    assert view.thinking
    session.event("session_ended")
    assert view.banner is not None and "no longer exists" in view.banner.text
    assert not view.thinking
    # Unrelated events do not clear the banner.
    view.status_changed(StatusChange(ConnectionStatus.CONNECTED))
    view.session_opened()
    assert view.session_gone
    view.new_session()
    assert view.banner is None and not view.thinking
    # The new session numbers from 1 again; its messages go after the old ones.
    fresh = Session(view)
    view.outbox_event(pending("m2", "again"))
    fresh.answer(fresh.user("m2", "again"))
    texts = [m["text"] for m in view.summary()["messages"]]
    assert texts == ["hi", "New session “demo”", "again", "ok"]
    assert seq == 1


def test_connection_status_line(view: ChatView) -> None:
    assert view.status_line == "connected"
    view.status_changed(
        StatusChange(ConnectionStatus.RECONNECTING, 2, 6, 1.5, "TransportError: gone")
    )
    assert view.status_line == "reconnecting 2 of 6…"
    assert "next try in 2 s" in (view.status_detail or "")
    assert view.status_action is None
    view.status_changed(StatusChange(ConnectionStatus.OFFLINE, error="TransportError: gone"))
    assert view.status_line == "offline"
    assert view.status_action == "Reconnect"
    assert "6 attempts" in (view.status_detail or "")
    assert "offline" in status_html(view)


def test_offline_and_refused_connections_never_leave_thinking_on(view: ChatView) -> None:
    session = Session(view)
    view.outbox_event(pending("m1"))
    session.user("m1")
    assert view.thinking
    view.status_changed(StatusChange(ConnectionStatus.OFFLINE))
    assert not view.thinking
    view.status_changed(StatusChange(ConnectionStatus.CONNECTED))
    assert view.thinking  # back: the answer will still come
    view.status_changed(StatusChange(ConnectionStatus.FAILED, error="HTTP 403: forbidden"))
    assert not view.thinking
    assert view.banner is not None and view.banner.kind == "connection_refused"
    assert "403" in view.banner.text
    view.status_changed(StatusChange(ConnectionStatus.CONNECTED))
    assert view.banner is None


def test_answers_without_reply_to_are_matched_in_order(view: ChatView) -> None:
    session = Session(view)
    view.outbox_event(pending("m1"))
    view.outbox_event(pending("m2"))
    session.user("m1")
    session.user("m2")
    session.answer(None, "one")
    assert view.thinking  # m2 still waits
    session.answer(None, "two")
    assert not view.thinking


def test_agent_errors_show_on_their_answer_and_end_thinking(view: ChatView) -> None:
    session = Session(view)
    view.outbox_event(pending("m1"))
    seq = session.user("m1")
    session.event("message_start", messageId="a1", replyTo=seq)
    session.event("block_delta", messageId="a1", text="partial ")
    session.event("error", messageId="a1", message="model backend unavailable")
    assert view.thinking  # the answer is not over until its message_end
    session.event("message_end", messageId="a1")
    assert not view.thinking
    answer = view.entries[-1]
    assert answer.error == "model backend unavailable" and answer.done
    assert "the agent failed" in entry_html(answer)
    session.event("error", message="session-level trouble")
    assert view.entries[-1].role == "notice"


def test_replayed_events_are_shown_once(view: ChatView) -> None:
    session = Session(view)
    session.user("x", "from another client")
    view.session_event(
        {"type": "user_message", "sessionId": SID, "seq": 1, "clientMsgId": "x", "text": "dup"}
    )
    view.session_event({"type": "user_message", "sessionId": "other", "seq": 2, "text": "no"})
    assert [m["text"] for m in view.summary()["messages"]] == ["from another client"]


def test_changes_say_what_to_redraw(view: ChatView) -> None:
    session = Session(view)
    view.take_changes()
    assert not view.take_changes()
    view.outbox_event(pending("m1"))
    changes = view.take_changes()
    assert changes.entries == {"u:m1"} and changes.order
    session.user("m1")
    session.event("message_start", messageId="a", replyTo=1)
    view.take_changes()
    session.event("block_delta", messageId="a", text="x")
    changes = view.take_changes()
    assert changes.entries == {"a0:a"} and not changes.order


def test_html_escapes_user_and_agent_text(view: ChatView) -> None:
    session = Session(view)
    view.outbox_event(pending("m1", "<img src=x onerror=alert(1)> & co"))
    seq = session.user("m1", "<img src=x onerror=alert(1)> & co")
    session.answer(seq, "<script>alert('x')</script>")
    user, agent = view.entries
    assert "<img" not in entry_html(user) and "&lt;img src=x" in entry_html(user)
    assert "&amp; co" in entry_html(user)
    assert "<script>" not in entry_html(agent) and "&lt;script&gt;" in entry_html(agent)
    assert "✓ delivered" in entry_html(user)


def test_a_gone_session_shows_only_its_banner_and_its_action(view: ChatView) -> None:
    # The server detaches the driver, then ends the session: one cause, one status.
    view.detached("session_ended")
    Session(view).event("session_ended")
    assert view.banner is not None and view.banner.action == "Start a new session"
    assert view.status_action is None  # no Take over: there is nothing to take over
    assert view.status_detail is None  # no raw reason code next to the banner
    assert view.status_line == "connected"


@pytest.mark.parametrize(
    ("reason", "words"),
    [
        ("taken_over", "another client now drives this session"),
        ("expired", "this panel was away too long and no longer drives this session"),
        ("something_new", "this panel no longer drives this session"),
    ],
)
def test_not_driving_is_said_in_words_with_take_over(
    view: ChatView, reason: str, words: str
) -> None:
    view.detached(reason)
    assert view.status_detail == words
    assert view.status_action == "Take over"
    view.session_opened()  # what a successful Take over ends with
    assert view.status_detail is None and view.status_action is None
