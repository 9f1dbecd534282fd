"""Each answer's HTML body, rendered from Markdown once per change, and while it streams
no more often than its cost allows.

An ipywidgets HTML widget takes its whole value on every change, and Markdown is rendered
from the whole text, so each redraw of a streaming answer costs time in proportion to its
length. A short answer is cheap and redraws at the panel's pace; a long one (200 KB
renders in a good part of a second) would spend all its time re-rendering. So a streaming
answer is rendered again only once `cost / share` seconds have passed since its last
render (at most `share` of the time goes to it); a delta meanwhile keeps the HTML drawn
before, and the answer is due for a redraw when that time is up. An answer that ended is
rendered at once, so what it ends with is always drawn whole.

No widgets and no I/O; one thread (the widget's loop) uses it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from .chatview import Entry
from .markdown import render_markdown

# The share of the time one streaming answer may spend being rendered.
RENDER_SHARE: Final = 0.2


@dataclass
class _Rendered:
    text: str
    html: str
    cost: float  # seconds the render took
    at: float  # when it finished (the clock's time)


class AnswerBodies:
    """The HTML body of each answer, by entry key; see the module's docstring."""

    def __init__(
        self,
        render: Callable[[str], str] = render_markdown,
        clock: Callable[[], float] = time.monotonic,
        share: float = RENDER_SHARE,
    ) -> None:
        self._render = render
        self._clock = clock
        self._share = share
        self._rendered: dict[str, _Rendered] = {}
        self._due: dict[str, float] = {}  # deferred answers: when each may render again

    def html(self, entry: Entry) -> str:
        """The body of an answer: its text rendered, or while it streams, maybe the
        render before (then it is due: see `due`)."""
        before = self._rendered.get(entry.key)
        if before is not None and before.text == entry.text:
            self._due.pop(entry.key, None)
            return before.html
        if before is not None and not entry.done:
            ready = before.at + before.cost / self._share
            if self._clock() < ready:
                self._due[entry.key] = ready
                return before.html
        started = self._clock()
        html = self._render(entry.text)
        finished = self._clock()
        self._rendered[entry.key] = _Rendered(entry.text, html, finished - started, finished)
        self._due.pop(entry.key, None)
        return html

    def due(self) -> set[str]:
        """Deferred answers whose time has come: draw them again."""
        now = self._clock()
        return {key for key, ready in self._due.items() if ready <= now}

    def next_due_in(self) -> float | None:
        """Seconds until the next deferred answer may render (None: none waits)."""
        if not self._due:
            return None
        return max(0.0, min(self._due.values()) - self._clock())

    def keep_only(self, keys: Iterable[str]) -> None:
        """Forget the answers no longer drawn."""
        kept = set(keys)
        for table in (self._rendered, self._due):
            for key in [key for key in table if key not in kept]:
                del table[key]
