"""How a `ChatView` is drawn with ipywidgets' own controls: the chat panel's widgets.

`ChatPanel` owns the widgets (message list, input, Send, Stop, status line, banner)
and redraws only what a `Changes` names. It does no I/O and starts no thread:
`ChatWidget` calls `draw` from its client's thread, which only changes existing
widgets; widgets are made and closed on the kernel's thread (`kernel_thread`), a
message's row by `panel_rows`. The panel reports the user's actions through the
callbacks it was given. The HTML is in `panel_html`; answers' bodies (Markdown, rendered
at a pace their length allows while they stream) come from `answer_bodies`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, Final

import ipywidgets as widgets  # type: ignore[import-untyped]

from ..client.stream import ConnectionStatus
from . import panel_style as css
from .answer_bodies import AnswerBodies
from .chatview import Changes, ChatView, Delivery, Entry
from .kernel_thread import KernelThread
from .panel_html import (
    _ERROR,
    _FONT,
    _MUTED,
    _SMALL,
    _text,
    banner_html,
    delivery_html,
    entry_html,
    row_classes,
    status_html,
    waiting_rows_html,
)
from .panel_rows import Row, close_rows, close_widget, make_row

__all__ = [
    "ChatPanel",
    "banner_html",
    "close_widget",
    "delivery_html",
    "entry_html",
    "status_html",
]

# Seconds a submit waits for its text when no text update follows it (see _request_submit),
# and how long it keeps checking while the input is still empty: the text's update can
# trail by more than one settle (a loaded kernel, or the round trip of an earlier update).
SUBMIT_SETTLE: Final = 0.2
SUBMIT_WAIT: Final = 5.0
DEAD_STATUSES: Final = frozenset(
    {ConnectionStatus.OFFLINE, ConnectionStatus.FAILED, ConnectionStatus.CLOSED}
)


class ChatPanel:
    """The widgets of a chat panel and how a `ChatView` is drawn on them.

    `on_text(text)` is called (on the kernel's thread) with what the user sent and
    returns whether it was taken, which clears the input; `on_retry(client_msg_id)`,
    `on_banner_action()`, `on_status_action()` and `on_stop(message_id)` (the answer that
    was streaming when Stop was drawn) report the buttons. `draw` may be
    called from another thread, but from one at a time: it only changes existing
    widgets. New rows are made on the kernel's thread (`kernel`); until they are, their
    messages are drawn into one "waiting rows" widget, so an answer keeps streaming in
    while a cell keeps that thread busy. `on_rows_made()` says when to draw again.
    """

    def __init__(
        self,
        *,
        height: str,
        max_messages: int,
        on_text: Callable[[str], bool],
        on_retry: Callable[[str], None],
        on_banner_action: Callable[[], None],
        on_status_action: Callable[[], None],
        on_stop: Callable[[str], None] = lambda _: None,
        kernel: KernelThread | None = None,
        on_rows_made: Callable[[], None] = lambda: None,
    ) -> None:
        self.max_messages = max(1, max_messages)
        self.kernel = kernel or KernelThread()
        self._on_rows_made = on_rows_made
        # Rows asked of the kernel's thread, and those it made that `draw` has not taken.
        self._requested: set[str] = set()
        self._made: dict[str, Row] = {}
        self._made_lock = threading.Lock()
        self._on_text = on_text
        self._on_retry = on_retry
        self.rows: dict[str, Row] = {}
        self.bodies = AnswerBodies()
        self._shown: list[str] = []
        self._waiting_shown = False
        self._drawn_down = False
        self.closed = False
        self.banner_text = widgets.HTML(layout=widgets.Layout(flex="1 1 auto"))
        self.banner_button = widgets.Button(description="Start a new session")
        self.banner_button.on_click(lambda _: on_banner_action())
        self.banner_box = widgets.HBox(
            [self.banner_text, self.banner_button],
            layout=widgets.Layout(display="none", align_items="center"),
        )
        self.banner_box.add_class(css.BANNER)
        self.thinking_row = widgets.HTML(
            f'<div style="{_FONT};{_SMALL};color:{_MUTED};font-style:italic;margin:2px 4px">'
            "thinking…</div>",
            layout=widgets.Layout(display="none", flex="0 0 auto"),
        )
        self.thinking_row.add_class(css.THINKING)
        self.more = widgets.HTML(layout=widgets.Layout(display="none", flex="0 0 auto"))
        self.waiting_rows = widgets.HTML(layout=widgets.Layout(flex="0 0 auto"))
        self.empty = widgets.HTML(
            f'<div style="{_FONT};{_SMALL};color:{_MUTED};text-align:center;margin:8px">'
            "No messages yet. Type below and press Enter.</div>"
        )
        # column-reverse keeps the list scrolled to the newest message with no script:
        # children are given newest first.
        self.messages = widgets.VBox(
            [self.empty],
            layout=widgets.Layout(
                flex_flow="column-reverse",
                overflow="auto",
                max_height=height,
                min_height="80px",
                border="1px solid var(--jp-border-color2,#e0e0e0)",
                padding="4px 8px",
            ),
        )
        self.messages.add_class(css.MESSAGES)
        # The text reaches the kernel on Enter or blur ("change"), not per keystroke.
        self.input = widgets.Text(
            placeholder="Message — press Enter to send",
            continuous_update=False,
            layout=widgets.Layout(flex="1 1 auto", width="auto"),
        )
        # Enter arrives as a custom "submit" message (the deprecated on_submit's source).
        self.input.on_msg(self._input_message)
        self.input.observe(self._input_changed, names="value")
        self._submit_requested = False
        self.send_button = widgets.Button(description="Send", button_style="primary")
        self.send_button.on_click(lambda _: self._request_submit())
        # Shown while an answer streams; stops the one it was drawn for, never a later one.
        self._on_stop = on_stop
        self._stop_target: str | None = None
        self.stop_button = widgets.Button(
            description="Stop",
            icon="stop",
            tooltip="Stop the answer that is streaming",
            layout=widgets.Layout(display="none", width="auto"),
        )
        self.stop_button.add_class(css.STOP)
        self.stop_button.on_click(lambda _: self._stop_clicked())
        self.input_row = widgets.HBox([self.input, self.send_button, self.stop_button])
        self.input_row.add_class(css.INPUT_ROW)
        self.hint = widgets.HTML(layout=widgets.Layout(display="none"))
        self.status_text = widgets.HTML(layout=widgets.Layout(flex="1 1 auto"))
        self.status_button = widgets.Button(
            description="Reconnect", layout=widgets.Layout(display="none", width="auto")
        )
        self.status_button.on_click(lambda _: on_status_action())
        self.status_row = widgets.HBox(
            [self.status_text, self.status_button], layout=widgets.Layout(align_items="center")
        )
        self.status_row.add_class(css.STATUS_ROW)
        # Shown by the style sheet alone, once the front end marks the panel disconnected.
        self.restarted = widgets.HTML(
            f'<div style="{_FONT};padding:6px 10px;border-radius:4px;'
            "background:var(--jp-error-color3,#ffebee);color:#5f1212;"
            f'border:1px solid var(--jp-error-color1,#d32f2f)">⚠ {_text(css.RESTARTED_TEXT)}</div>'
        )
        self.restarted.add_class(css.RESTARTED)
        self.style = widgets.HTML(
            f"<style>{css.CSS}</style>", layout=widgets.Layout(display="none")
        )
        self.box = widgets.VBox(
            [
                self.style,
                self.banner_box,
                self.messages,
                self.input_row,
                self.restarted,
                self.hint,
                self.status_row,
            ],
            layout=widgets.Layout(width="100%"),
        )
        self.box.add_class(css.PANEL)

    @property
    def children(self) -> list[Any]:
        """The panel's top-level widgets: one box, with the panel's style sheet inside."""
        return [self.box]

    # -- the input (kernel thread) ----------------------------------------------------------

    def _input_message(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if isinstance(content, dict) and content.get("event") == "submit":
            self._request_submit()

    # The browser sends Enter's "submit" at once, but the text it belongs to as a state
    # update that follows it, and that ipywidgets may hold back until the kernel acknowledged
    # an earlier update (always so while a cell runs). Reading the value at "submit" would
    # send stale or partial text. So a submit (or Send click) is a request, fulfilled by the
    # text update that follows it, or, when the text had already arrived (it was committed
    # by a blur before Enter), by a check once the messages queued behind it are handled.

    def _request_submit(self) -> None:
        self._submit_requested = True
        try:
            kernel_loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop in this thread (plain Python): nothing is queued
            self._flush_submit()
            return
        deadline = kernel_loop.time() + SUBMIT_WAIT
        kernel_loop.call_later(SUBMIT_SETTLE, self._settle_submit, kernel_loop, deadline)

    def _settle_submit(self, kernel_loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        if not self._submit_requested:
            return  # fulfilled by the text's update
        if self.input.value.strip() or kernel_loop.time() >= deadline:
            self._flush_submit()
        else:  # no text yet: its update is still on its way
            kernel_loop.call_later(SUBMIT_SETTLE, self._settle_submit, kernel_loop, deadline)

    def _input_changed(self, change: dict[str, Any]) -> None:
        if self._submit_requested and str(change["new"]).strip():
            self._flush_submit()

    def _flush_submit(self) -> None:
        if self._submit_requested:
            self._submit_requested = False
            self._submit_input()

    def _submit_input(self) -> None:
        text = self.input.value.strip()
        if text and not self.closed and self._on_text(text):
            self.input.value = ""  # kept when refused, so nothing typed is lost

    def _stop_clicked(self) -> None:
        target = self._stop_target
        if target is not None and not self.closed:
            self._on_stop(target)

    # -- drawing -------------------------------------------------------------------------------

    def draw(self, view: ChatView, changes: Changes) -> None:
        """Redraw what `changes` names (and pending messages when the connection's state
        flipped, since they mention it)."""
        if self.closed:
            return
        down = view.status in DEAD_STATUSES
        changed = changes.entries | self.bodies.due()
        if changed or changes.order or self.rows_made or down != self._drawn_down:
            self._draw_messages(view, changed, recheck=down != self._drawn_down)
            self._drawn_down = down
        if changes.chrome:
            self._draw_chrome(view)

    @property
    def rows_made(self) -> bool:
        """The kernel's thread made rows that the next `draw` puts in place."""
        with self._made_lock:
            return bool(self._made)

    @property
    def redraw_in(self) -> float | None:
        """Seconds until a streaming answer drawn from an earlier render is due to be drawn
        again (None: none is); `draw` then, even with no changes."""
        return self.bodies.next_due_in()

    @property
    def rows_pending(self) -> bool:
        """Rows are asked of the kernel's thread and not all drawn yet."""
        return bool(self._requested)

    def _draw_messages(self, view: ChatView, changed: set[str], *, recheck: bool) -> None:
        # `recheck`: the connection went down or came back, which pending messages mention.
        down = view.status in DEAD_STATUSES
        entries = view.entries
        visible = entries[-self.max_messages :]
        keys = [entry.key for entry in visible]
        self.bodies.keep_only(keys)
        made = self._take_made_rows()
        self._ask_for_rows(view, [e for e in visible if e.key not in self.rows], down)
        made |= self._take_made_rows()  # made at once when this is the kernel's thread
        # Rows are shown up to the first message with none yet; it and those after it are
        # drawn into `waiting_rows`, in order, until their rows exist.
        first_waiting = next(
            (i for i, entry in enumerate(visible) if entry.key not in self.rows), len(visible)
        )
        shown = keys[:first_waiting]
        for entry in visible[:first_waiting]:
            if (
                entry.key in changed
                or entry.key in made
                or entry.key not in self._shown
                or (recheck and entry.delivery is Delivery.PENDING)
            ):
                self._update_row(view, self.rows[entry.key], entry, down)
        waiting = visible[first_waiting:]
        if waiting:
            value = waiting_rows_html([(e, self._entry_html(view, e, down)) for e in waiting])
            if self.waiting_rows.value != value:
                self.waiting_rows.value = value
        gone = [self.rows.pop(key) for key in set(self.rows) - set(keys)]
        if gone:
            self.kernel.run(lambda: close_rows(gone))
        if shown != self._shown or bool(waiting) != self._waiting_shown:
            self._shown = shown
            self._waiting_shown = bool(waiting)
            hidden = len(entries) - len(visible)
            self.more.value = (
                f'<div style="{_FONT};{_SMALL};color:{_MUTED};text-align:center">'
                f"… {hidden} earlier message{'' if hidden == 1 else 's'} not shown</div>"
            )
            self.more.layout.display = "" if hidden else "none"
            rows = [self.rows[key].container for key in reversed(shown)]
            if waiting:
                rows.insert(0, self.waiting_rows)
            self.messages.children = (
                [self.thinking_row, *rows, self.more] if rows else [self.thinking_row, self.empty]
            )

    def _take_made_rows(self) -> set[str]:
        with self._made_lock:
            made, self._made = self._made, {}
        for key, row in made.items():
            self._requested.discard(key)
            self.rows[key] = row
        return set(made)

    def _entry_html(self, view: ChatView, entry: Entry, down: bool) -> str:
        if entry.role != "agent":
            return entry_html(entry, connection_down=down)
        body, stop_error = self.bodies.html(entry), view.stop_error(entry.key)
        return entry_html(entry, body=body, stop_error=stop_error)

    def _ask_for_rows(self, view: ChatView, entries: list[Entry], down: bool) -> None:
        """Ask the kernel's thread for the rows of `entries` (each once)."""
        wanted = [entry for entry in entries if entry.key not in self._requested]
        if not wanted:
            return
        self._requested.update(entry.key for entry in wanted)
        # What the kernel's thread needs, copied: the view belongs to this thread.
        specs = [
            (
                e.key,
                self._entry_html(view, e, down),
                row_classes(e),
                None if e.delivery is None else e.client_msg_id or "",
            )
            for e in wanted
        ]

        def make() -> None:
            if self.closed:
                return
            rows = {
                key: make_row(value, names, own, self._on_retry) for key, value, names, own in specs
            }
            with self._made_lock:
                self._made.update(rows)
            self._on_rows_made()

        self.kernel.run(make)

    def _update_row(self, view: ChatView, row: Row, entry: Entry, down: bool) -> None:
        value = self._entry_html(view, entry, down)
        if row.html.value != value:
            row.html.value = value
        if row.container is not row.html:
            self._update_actions(row, entry)

    def _update_actions(self, row: Row, entry: Entry) -> None:
        wanted = entry.delivery is Delivery.FAILED and entry.retry_offered
        shown = list(row.container.children)
        target = [row.html, row.actions] if wanted and row.actions is not None else [row.html]
        if shown != target:
            row.container.children = target

    def _draw_chrome(self, view: ChatView) -> None:
        self.thinking_row.layout.display = "" if view.thinking else "none"
        banner = view.banner
        if banner is None:
            self.banner_box.layout.display = "none"
        else:
            self.banner_text.value = banner_html(banner)
            self.banner_button.description = banner.action
            self.banner_box.layout.display = ""
        self._draw_stop(view)
        self.status_text.value = status_html(view)
        action = view.status_action
        if action is None:
            self.status_button.layout.display = "none"
        else:
            self.status_button.description = action
            self.status_button.layout.display = ""
        if view.input_error:
            self.hint.value = (
                f'<div style="{_FONT};{_SMALL};color:{_ERROR}">'
                f"✗ not sent: {_text(view.input_error)}</div>"
            )
            self.hint.layout.display = ""
        else:
            self.hint.layout.display = "none"

    def _draw_stop(self, view: ChatView) -> None:
        answer = view.stoppable
        self._stop_target = None if answer is None else answer.message_id
        if answer is None:
            self.stop_button.layout.display = "none"
            return
        stopping = view.stopping(answer.key)
        self.stop_button.description = "Stopping…" if stopping else "Stop"
        self.stop_button.disabled = stopping
        self.stop_button.layout.display = ""

    def close(self) -> None:
        """Close every widget of the panel (on the kernel's thread, once nothing draws
        any more)."""
        self.closed = True
        with self._made_lock:
            made, self._made = self._made, {}
        for row in [*self.rows.values(), *made.values()]:
            row.close()
        self.rows.clear()
        self._requested.clear()
        for widget in (
            self.banner_button,
            self.banner_text,
            self.banner_box,
            self.thinking_row,
            self.more,
            self.waiting_rows,
            self.empty,
            self.messages,
            self.input,
            self.send_button,
            self.stop_button,
            self.input_row,
            self.hint,
            self.status_text,
            self.status_button,
            self.status_row,
            self.restarted,
            self.style,
            self.box,
        ):
            close_widget(widget)
