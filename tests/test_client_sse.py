"""The incremental SSE parser: any chunking of a stream yields the same events."""

from __future__ import annotations

import json

import pytest

from jupyter_chatbridge.client.sse import SSEEvent, SSEParser, SSEProtocolError
from jupyter_chatbridge.protocol import SSE_PING, dumps, sse_id_line, sse_payload


def _frame(frame_id: int, event: str, data: dict[str, object]) -> bytes:
    return sse_id_line(frame_id) + sse_payload(event, dumps(data))


# What the server writes: a welcome without id, then framed events, heartbeats in between,
# and non-ASCII text so chunk boundaries fall inside multi-byte characters.
STREAM = (
    sse_payload("welcome", dumps({"connectionId": "cid-x", "resumed": False, "protocol": 1}))
    + SSE_PING
    + _frame(1, "user_message", {"sessionId": "s1", "seq": 1, "text": "héllo 😀 wörld"})
    + _frame(2, "block_delta", {"sessionId": "s1", "seq": 2, "text": "日本語"})
    + SSE_PING
    + _frame(3, "message_end", {"sessionId": "s1", "seq": 3, "messageId": "m1"})
)

EXPECTED = [
    SSEEvent("welcome", dumps({"connectionId": "cid-x", "resumed": False, "protocol": 1}), None),
    SSEEvent("user_message", dumps({"sessionId": "s1", "seq": 1, "text": "héllo 😀 wörld"}), "1"),
    SSEEvent("block_delta", dumps({"sessionId": "s1", "seq": 2, "text": "日本語"}), "2"),
    SSEEvent("message_end", dumps({"sessionId": "s1", "seq": 3, "messageId": "m1"}), "3"),
]


def _parse_all(chunks: list[bytes], parser: SSEParser | None = None) -> list[SSEEvent]:
    parser = parser or SSEParser()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    return events


def test_whole_stream_in_one_chunk() -> None:
    parser = SSEParser()
    events = parser.feed(STREAM)
    assert events == EXPECTED
    assert events[1].json()["text"] == "héllo 😀 wörld"
    assert parser.comments == 2
    assert parser.last_event_id == "3"


def test_every_single_split_point_gives_the_same_events() -> None:
    for cut in range(len(STREAM) + 1):
        parser = SSEParser()
        events = _parse_all([STREAM[:cut], STREAM[cut:]], parser)
        assert events == EXPECTED, f"split at byte {cut}"
        assert parser.comments == 2


def test_every_pair_of_split_points_gives_the_same_events() -> None:
    for first in range(0, len(STREAM) + 1, 7):
        for second in range(first, len(STREAM) + 1):
            chunks = [STREAM[:first], STREAM[first:second], STREAM[second:]]
            assert _parse_all(chunks) == EXPECTED, f"split at {first} and {second}"


def test_one_byte_at_a_time() -> None:
    assert _parse_all([STREAM[i : i + 1] for i in range(len(STREAM))]) == EXPECTED


@pytest.mark.parametrize("newline", [b"\r\n", b"\r", b"\n"])
def test_all_line_endings_at_every_split_point(newline: bytes) -> None:
    stream = STREAM.replace(b"\n", newline)
    for cut in range(len(stream) + 1):
        assert _parse_all([stream[:cut], stream[cut:]]) == EXPECTED, f"split at byte {cut}"


def test_crlf_split_between_cr_and_lf_does_not_make_an_extra_blank_line() -> None:
    parser = SSEParser()
    # If the \n after the \r counted as its own line, `data: a` would dispatch alone.
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\ndata: b\r") == []
    assert parser.feed(b"\n\r") == [SSEEvent("message", "a\nb", None)]
    assert parser.feed(b"\n") == []
    assert parser.feed(b"data: c\r\n\r\n") == [SSEEvent("message", "c", None)]


def test_empty_chunks_change_nothing() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: x\r") == []
    assert parser.feed(b"") == []
    assert parser.feed(b"\n") == []
    assert parser.feed(b"") == []
    assert parser.feed(b"\n") == [SSEEvent("message", "x", None)]


def test_multiline_data_is_joined_with_newlines() -> None:
    events = SSEParser().feed(b"data: first\ndata:second\ndata:  third\ndata\n\n")
    # One leading space is stripped, a second one is data; a bare `data` adds an empty line.
    assert events == [SSEEvent("message", "first\nsecond\n third\n", None)]


def test_comments_are_counted_not_dispatched() -> None:
    parser = SSEParser()
    assert parser.feed(b": ping\n\n:\n\n: another\n") == []
    assert parser.comments == 3


def test_event_without_data_is_not_dispatched_and_its_type_does_not_leak() -> None:
    parser = SSEParser()
    assert parser.feed(b"event: lonely\n\n") == []
    assert parser.feed(b"data: x\n\n") == [SSEEvent("message", "x", None)]


def test_field_without_colon_and_unknown_fields() -> None:
    parser = SSEParser()
    events = parser.feed(b"bogus: 1\nevent\ndata: x\nfoo\n\n")
    assert events == [SSEEvent("message", "x", None)]


def test_id_persists_across_events_until_changed_or_reset() -> None:
    parser = SSEParser()
    events = parser.feed(
        b"id: 7\ndata: a\n\n"  # sets the id
        b"data: b\n\n"  # keeps it
        b"id: 8\nevent: e\ndata: c\n\n"
        b"id\ndata: d\n\n"  # an empty id resets it
    )
    assert [(e.data, e.id) for e in events] == [("a", "7"), ("b", "7"), ("c", "8"), ("d", None)]
    assert events[2].event == "e"
    assert parser.last_event_id is None


def test_id_with_nul_is_ignored() -> None:
    parser = SSEParser()
    events = parser.feed(b"id: 5\ndata: a\n\nid: 6\x007\ndata: b\n\n")
    assert [e.id for e in events] == ["5", "5"]
    assert parser.last_event_id == "5"


def test_id_without_data_still_updates_last_event_id() -> None:
    parser = SSEParser()
    assert parser.feed(b"id: 41\n\n") == []
    assert parser.last_event_id == "41"


def test_last_event_id_is_only_committed_at_dispatch() -> None:
    parser = SSEParser()
    parser.feed(b"id: 1\ndata: a\n\nid: 2\ndata: b\n")
    # frame 2 is incomplete: a reconnect must resume after 1, not after 2
    assert parser.last_event_id == "1"


def test_reset_keeps_last_event_id_and_drops_the_partial_event() -> None:
    parser = SSEParser()
    parser.feed(b"id: 1\ndata: a\n\nid: 2\ndata: half")
    parser.reset()
    assert parser.last_event_id == "1"
    assert parser.feed(b"data: fresh\n\n") == [SSEEvent("message", "fresh", "1")]


def test_retry_field_accepts_digits_only() -> None:
    parser = SSEParser()
    parser.feed(b"retry: 2500\n\n")
    assert parser.retry == 2500
    parser.feed(b"retry: 12x\n\nretry: -1\n\nretry:\n\nretry: 1.5\n\n")
    assert parser.retry == 2500


def test_leading_bom_is_ignored_once() -> None:
    bom = "\ufeff".encode()
    stream = bom + b"data: a\n\n"
    for cut in range(len(stream) + 1):
        assert _parse_all([stream[:cut], stream[cut:]]) == [SSEEvent("message", "a", None)]
    # only the first BOM of the stream is special
    events = SSEParser().feed(b"data: a\n\n" + bom + b"data: b\n\n")
    assert events == [SSEEvent("message", "a", None)]


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    events = SSEParser().feed(b"data: \xff\xfe ok\n\n")
    assert events == [SSEEvent("message", "\ufffd\ufffd ok", None)]


def test_unterminated_line_over_the_limit_raises() -> None:
    parser = SSEParser(max_line=1024)
    parser.feed(b"data: " + b"x" * 1000)
    with pytest.raises(SSEProtocolError, match="1024"):
        parser.feed(b"x" * 100)
    # the stream is unusable after that; the client must reconnect
    with pytest.raises(SSEProtocolError):
        parser.feed(b"\n\n")


def test_line_at_the_limit_is_fine_and_long_complete_lines_are_refused() -> None:
    parser = SSEParser(max_line=16)
    assert parser.feed(b"data: 0123456789\n\n") == [SSEEvent("message", "0123456789", None)]
    with pytest.raises(SSEProtocolError):
        SSEParser(max_line=16).feed(b"data: 0123456789X\n\n")


def test_default_line_limit_is_one_mebibyte() -> None:
    parser = SSEParser()
    parser.feed(b"data: " + b"x" * (1024 * 1024 - 6))
    with pytest.raises(SSEProtocolError):
        parser.feed(b"x")


def test_event_data_limit_bounds_many_short_lines() -> None:
    parser = SSEParser(max_event=100)
    with pytest.raises(SSEProtocolError):
        parser.feed(b"data: 0123456789\n" * 20)


def test_json_helper() -> None:
    event = SSEParser().feed(b'event: welcome\ndata: {"a": [1, 2]}\n\n')[0]
    assert event.json() == {"a": [1, 2]}
    with pytest.raises(json.JSONDecodeError):
        SSEEvent(data="not json").json()
