"""An incremental Server-Sent Events parser (WHATWG HTML, "Interpreting an event stream").

Feed it bytes as they arrive, cut anywhere; it returns the events each chunk
completes. It does no I/O, so any transport (tornado, httpx, a test) can drive it.
"""

from __future__ import annotations

import json as _json
import re
from dataclasses import dataclass
from typing import Any, Final

DEFAULT_MAX_LINE: Final = 1024 * 1024
DEFAULT_MAX_EVENT: Final = 8 * 1024 * 1024

_LINE_END: Final = re.compile(rb"[\r\n]")
_BOM: Final = "\ufeff"


class SSEProtocolError(ValueError):
    """The stream broke a limit the client sets to protect its memory."""


@dataclass(frozen=True)
class SSEEvent:
    """One dispatched event: its type, its data and the last event id at dispatch."""

    event: str = "message"
    data: str = ""
    id: str | None = None

    def json(self) -> Any:
        """The data parsed as JSON (every frame of this protocol carries JSON)."""
        return _json.loads(self.data)


class SSEParser:
    """Turns an event-stream byte stream into `SSEEvent`s.

    Attributes a client reads: `last_event_id` (send it back as `Last-Event-ID`
    when reconnecting; None when there is none), `retry` (the server's requested
    reconnection delay in milliseconds, or None) and `comments` (how many comment
    lines arrived, so heartbeats are visible).
    """

    def __init__(
        self,
        *,
        max_line: int = DEFAULT_MAX_LINE,
        max_event: int = DEFAULT_MAX_EVENT,
        last_event_id: str | None = None,
    ) -> None:
        if max_line <= 0 or max_event <= 0:
            raise ValueError("max_line and max_event must be positive")
        self.max_line = max_line
        self.max_event = max_event
        self.last_event_id: str | None = last_event_id or None
        self.retry: int | None = None
        self.comments = 0
        self._id_buffer = self.last_event_id
        self._line = bytearray()
        self._data: list[str] = []
        self._data_size = 0
        self._event_type = ""
        # A chunk that ends in \r may be half of a \r\n pair; the \n must not end a second line.
        self._skip_lf = False
        self._at_stream_start = True
        self._broken: SSEProtocolError | None = None

    def reset(self) -> None:
        """Prepare for a new stream (a reconnect); keeps `last_event_id`, `retry`, `comments`."""
        self._id_buffer = self.last_event_id
        self._line.clear()
        self._clear_event()
        self._skip_lf = False
        self._at_stream_start = True
        self._broken = None

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Consume the next bytes of the stream and return the events they complete."""
        if self._broken is not None:
            raise self._broken
        events: list[SSEEvent] = []
        start = 0
        if self._skip_lf and chunk:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                start = 1
        length = len(chunk)
        while True:
            match = _LINE_END.search(chunk, start)
            if match is None:
                break
            end = match.start()
            if self._line:
                self._line += chunk[start:end]
                raw = bytes(self._line)
                self._line.clear()
            else:
                raw = chunk[start:end]
            self._check_line(len(raw))
            next_start = end + 1
            if chunk[end] == 0x0D:
                if next_start < length:
                    if chunk[next_start] == 0x0A:
                        next_start += 1
                else:
                    self._skip_lf = True
            start = next_start
            event = self._process_line(raw)
            if event is not None:
                events.append(event)
        if start < length:
            self._line += chunk[start:]
            self._check_line(len(self._line))
        return events

    def _check_line(self, size: int) -> None:
        if size > self.max_line:
            self._fail(f"SSE line longer than {self.max_line} bytes; the server is misbehaving")

    def _fail(self, message: str) -> None:
        # Once a limit is hit the stream position is unknown, so every later feed fails too.
        self._broken = SSEProtocolError(message)
        self._line.clear()
        self._clear_event()
        raise self._broken

    def _process_line(self, raw: bytes) -> SSEEvent | None:
        # Line ends are ASCII, so cutting bytes there never splits a UTF-8 sequence.
        line = raw.decode("utf-8", errors="replace")
        if self._at_stream_start:
            self._at_stream_start = False
            if line.startswith(_BOM):
                line = line[1:]
        if not line:
            return self._dispatch()
        if line[0] == ":":
            self.comments += 1
            return None
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data_size += len(value) + 1
            if self._data_size > self.max_event:
                self._fail(f"SSE event data longer than {self.max_event} characters")
            self._data.append(value)
        elif field == "event":
            self._event_type = value
        elif field == "id" and "\0" not in value:
            self._id_buffer = value or None
        elif field == "retry" and value.isascii() and value.isdigit():
            self.retry = int(value)
        # Any other field is ignored, as the spec says.
        return None

    def _dispatch(self) -> SSEEvent | None:
        self.last_event_id = self._id_buffer
        if not self._data:
            self._clear_event()
            return None
        event = SSEEvent(
            event=self._event_type or "message",
            data="\n".join(self._data),
            id=self.last_event_id,
        )
        self._clear_event()
        return event

    def _clear_event(self) -> None:
        self._data.clear()
        self._data_size = 0
        self._event_type = ""
