"""The conversation an agent is given, rebuilt from a real session event log."""

from __future__ import annotations

from jupyter_chatbridge.protocol import EventType
from jupyter_chatbridge.server.agents import Ending, Role, Turn
from jupyter_chatbridge.server.context import Conversation, conversation_before, trim_turns
from jupyter_chatbridge.server.state import EventLog


class Chat:
    """Writes events the way the bridge does, into a real `EventLog`."""

    def __init__(self) -> None:
        self.log = EventLog("s1", max_events=1000, max_receipts=1000)

    def user(self, text: str) -> int:
        fields = {"clientMsgId": f"c{self.log.last_seq}", "text": text, "connectionId": None}
        return self.log.append(EventType.USER_MESSAGE, fields).seq

    def start(self, reply_to: int) -> str:
        message_id = f"m{reply_to}"
        self.log.append(EventType.MESSAGE_START, {"messageId": message_id, "replyTo": reply_to})
        return message_id

    def delta(self, message_id: str, text: str) -> None:
        self.log.append(EventType.BLOCK_DELTA, {"messageId": message_id, "text": text})

    def error(self, message_id: str, message: str) -> None:
        self.log.append(EventType.ERROR, {"message": message, "messageId": message_id})

    def end(self, message_id: str, reason: str | None = None) -> None:
        fields: dict[str, str] = {"messageId": message_id}
        if reason is not None:
            fields["reason"] = reason
        self.log.append(EventType.MESSAGE_END, fields)

    def exchange(self, question: str, *answer: str) -> int:
        seq = self.user(question)
        message_id = self.start(seq)
        for part in answer:
            self.delta(message_id, part)
        self.end(message_id)
        return seq

    def before(
        self, seq: int, max_chars: int = 10_000, max_turns: int | None = None
    ) -> tuple[Turn, ...]:
        return conversation_before(self.log.after(0), seq, max_chars, max_turns)


def test_earlier_exchanges_come_in_order_with_the_answers_joined() -> None:
    chat = Chat()
    chat.exchange("hi", "Hel", "lo!")
    chat.exchange("how are you?", "fine")
    third = chat.user("and now?")
    assert chat.before(third) == (
        Turn(Role.USER, "hi"),
        Turn(Role.ASSISTANT, "Hello!", Ending.COMPLETE),
        Turn(Role.USER, "how are you?"),
        Turn(Role.ASSISTANT, "fine", Ending.COMPLETE),
    )


def test_the_message_being_answered_and_later_ones_are_not_history() -> None:
    chat = Chat()
    first = chat.exchange("one", "1")
    second = chat.user("two")
    chat.user("three, queued")
    assert chat.before(first) == ()
    assert [t.text for t in chat.before(second)] == ["one", "1"]


def test_a_message_sent_while_an_answer_streamed_comes_after_that_answer() -> None:
    chat = Chat()
    first = chat.user("first")
    answer = chat.start(first)
    chat.delta(answer, "part one, ")
    second = chat.user("second, sent mid-answer")
    chat.delta(answer, "part two")
    chat.end(answer)
    chat.start(second)  # the second answer starts now: it sees the whole first one
    assert chat.before(second) == (
        Turn(Role.USER, "first"),
        Turn(Role.ASSISTANT, "part one, part two", Ending.COMPLETE),
    )


def test_an_answer_that_failed_keeps_its_partial_text_and_says_so() -> None:
    chat = Chat()
    seq = chat.user("question")
    answer = chat.start(seq)
    chat.delta(answer, "partial ")
    chat.error(answer, "agent failed: model backend unavailable")
    chat.end(answer)
    nxt = chat.user("again")
    assert chat.before(nxt)[-1] == Turn(Role.ASSISTANT, "partial ", Ending.ERROR)


def test_the_reason_of_message_end_says_how_an_answer_ended() -> None:
    chat = Chat()
    for reason in (Ending.STOPPED, Ending.INTERRUPTED, Ending.COMPLETE):
        seq = chat.user(f"q-{reason}")
        answer = chat.start(seq)
        chat.delta(answer, "some")
        if reason == Ending.INTERRUPTED:
            chat.error(answer, "the server restarted during this answer")
        chat.end(answer, reason)
    nxt = chat.user("next")
    assert [t.ended for t in chat.before(nxt) if t.role == Role.ASSISTANT] == [
        Ending.STOPPED,
        Ending.INTERRUPTED,
        Ending.COMPLETE,
    ]


def test_an_unfinished_answer_is_left_out() -> None:
    chat = Chat()
    chat.exchange("done", "yes")
    seq = chat.user("still streaming")
    answer = chat.start(seq)
    chat.delta(answer, "half")
    later = chat.user("later")
    assert chat.before(later) == (
        Turn(Role.USER, "done"),
        Turn(Role.ASSISTANT, "yes", Ending.COMPLETE),
        Turn(Role.USER, "still streaming"),
    )


def test_the_size_is_bounded_dropping_the_oldest_turns_whole() -> None:
    chat = Chat()
    for i in range(5):
        chat.exchange(f"q{i}" + "x" * 8, f"a{i}" + "y" * 8)  # every turn is 10 chars
    seq = chat.user("now")
    assert [t.text[:2] for t in chat.before(seq, max_chars=35)] == ["a3", "q4", "a4"]
    assert [t.text[:2] for t in chat.before(seq, max_chars=30)] == ["a3", "q4", "a4"]
    assert [t.text[:2] for t in chat.before(seq, max_chars=29)] == ["q4", "a4"]
    assert [t.text[:2] for t in chat.before(seq, max_turns=2)] == ["q4", "a4"]
    assert chat.before(seq, max_chars=9) == ()
    assert len(chat.before(seq)) == 10


def test_an_answer_whose_start_was_trimmed_from_the_log_is_left_out() -> None:
    chat = Chat()
    chat.exchange("old", "old answer")
    chat.exchange("new", "new answer")
    seq = chat.user("now")
    events = chat.log.after(2)  # the first user message and its message_start are gone
    assert conversation_before(events, seq, 1000) == (
        Turn(Role.USER, "new"),
        Turn(Role.ASSISTANT, "new answer", Ending.COMPLETE),
    )


def test_trim_turns_without_limits_keeps_everything() -> None:
    turns = [Turn(Role.USER, "a"), Turn(Role.ASSISTANT, "b", Ending.COMPLETE)]
    assert trim_turns(turns, None) == tuple(turns)
    assert trim_turns(turns, None, 0) == ()


def test_the_running_conversation_keeps_the_newest_whole_turns_within_its_budget() -> None:
    turns = [
        Turn(Role.USER, "a" * 10),
        Turn(Role.ASSISTANT, "b" * 10, Ending.COMPLETE),
        Turn(Role.USER, "c" * 5),
        Turn(Role.ASSISTANT, "d" * 12, Ending.STOPPED),
    ]
    for budget in (0, 11, 12, 17, 27, 36, 37, 100):
        conversation = Conversation(budget)
        for turn in turns:
            conversation.add(turn)
        # The same rule as trimming a whole history at once.
        assert conversation.turns == trim_turns(turns, budget), budget
    assert Conversation(27, turns).turns == tuple(turns[1:])
