"""How a `ChatView` is drawn with ipywidgets' own controls: the chat panel's widgets.

`ChatPanel` owns the widgets (message list, input, Send, status line, banner)
and redraws only what a `Changes` names. It does no I/O and starts no thread:
`ChatWidget` calls `draw` from its client's thread, and the panel reports the
user's actions through the callbacks it was given. All user and agent text is
escaped: an HTML widget renders whatever it is given.
"""

from __future__ import annotations

import asyncio
import html
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import ipywidgets as widgets  # type: ignore[import-untyped]

from ..client.stream import ConnectionStatus
from . import panel_style as css
from .chatview import Banner, Changes, ChatView, Delivery, Entry

# Seconds a submit waits for its text when no text update follows it (see _request_submit),
# and how long it keeps checking while the input is still empty: the text's update can
# trail by more than one settle (a loaded kernel, or the round trip of an earlier update).
SUBMIT_SETTLE: Final = 0.2
SUBMIT_WAIT: Final = 5.0
DEAD_STATUSES: Final = frozenset(
    {ConnectionStatus.OFFLINE, ConnectionStatus.FAILED, ConnectionStatus.CLOSED}
)

# -- HTML (pure functions) ------------------------------------------------------------------

_FONT = "font-family:var(--jp-ui-font-family,sans-serif);line-height:1.45"
_SMALL = "font-size:var(--jp-ui-font-size0,11px)"
_MUTED = "var(--jp-ui-font-color2,#757575)"
_WARN = "var(--jp-warn-color0,#b26b00)"
_ERROR = "var(--jp-error-color1,#d32f2f)"
_OK = "var(--jp-success-color1,#388e3c)"
_BUBBLE = "padding:6px 10px;max-width:85%;white-space:pre-wrap;overflow-wrap:anywhere"
_USER_BUBBLE = (
    f"{_BUBBLE};background:var(--jp-brand-color3,#c6dbf5);color:#111;"
    "border-radius:12px 12px 2px 12px"
)
_AGENT_BUBBLE = (
    f"{_BUBBLE};background:var(--jp-layout-color2,#eeeeee);"
    "color:var(--jp-ui-font-color0,#111);border-radius:12px 12px 12px 2px"
)


def _text(value: str) -> str:
    return html.escape(value, quote=True)


def delivery_html(entry: Entry, *, connection_down: bool = False) -> str:
    """The small state line under a message sent from this panel ('' if none)."""
    if entry.delivery is None:
        return ""
    if entry.delivery is Delivery.DELIVERED:
        color, label = _OK, "✓ delivered"
    elif entry.delivery is Delivery.PENDING:
        color = _MUTED
        label = "sending… (waiting for the connection)" if connection_down else "sending…"
    elif entry.delivery is Delivery.RETRYING:
        when = f" in {entry.retry_in:.0f} s" if entry.retry_in is not None else ""
        color, label = _WARN, f"⚠ delivery delayed, retrying{when}… ({entry.error})"
    else:
        color, label = _ERROR, f"✗ not delivered: {entry.error}"
    return (
        f'<div class="chatbridge-delivery" style="{_SMALL};color:{color};text-align:right">'
        f"{_text(label)}</div>"
    )


def entry_html(entry: Entry, *, connection_down: bool = False) -> str:
    """One message as HTML: a bubble (user right, agent left) or a centred notice."""
    if entry.role == "notice":
        color = _ERROR if entry.error else _MUTED
        return (
            f'<div style="{_FONT};{_SMALL};color:{color};text-align:center;margin:4px 0">'
            f"{_text(entry.text)}</div>"
        )
    if entry.role == "user":
        bubble = f'<div class="chatbridge-bubble" style="{_USER_BUBBLE}">{_text(entry.text)}</div>'
        return (
            f'<div style="{_FONT};margin:3px 0">'
            f'<div style="display:flex;justify-content:flex-end">{bubble}</div>'
            f"{delivery_html(entry, connection_down=connection_down)}</div>"
        )
    body = _text(entry.text)
    if not entry.done and not entry.error:
        body += f'<span style="color:{_MUTED}">▍</span>'
    if not body:
        body = f'<span style="color:{_MUTED}">…</span>'
    error = ""
    if entry.error:
        error = (
            f'<div style="{_SMALL};color:{_ERROR}">✗ the agent failed: {_text(entry.error)}</div>'
        )
    return (
        f'<div style="{_FONT};margin:3px 0">'
        f'<div style="display:flex;justify-content:flex-start">'
        f'<div class="chatbridge-bubble" style="{_AGENT_BUBBLE}">{body}</div></div>{error}</div>'
    )


def status_html(view: ChatView) -> str:
    """The status line: session, connection state, and its detail."""
    status = view.status
    if status is ConnectionStatus.CONNECTED:
        color = _OK
    elif status in (ConnectionStatus.OFFLINE, ConnectionStatus.FAILED):
        color = _ERROR
    elif status is ConnectionStatus.RECONNECTING:
        color = _WARN
    else:
        color = _MUTED
    detail = view.status_detail
    extra = f' <span style="color:{_MUTED}">· {_text(detail)}</span>' if detail else ""
    return (
        f'<div style="{_FONT};{_SMALL}">'
        f'<span style="color:{color}">●</span> <b>{_text(view.session_id)}</b>'
        f' · <span style="color:{color}">{_text(view.status_line)}</span>{extra}</div>'
    )


def banner_html(banner: Banner) -> str:
    """The banner's text, styled as a warning."""
    return (
        f'<div style="{_FONT};padding:6px 10px;border-radius:4px;'
        "background:var(--jp-warn-color3,#fff3cd);color:#5d4200;"
        f'border:1px solid var(--jp-warn-color1,#ffc107)">⚠ {_text(banner.text)}</div>'
    )


# -- widgets ----------------------------------------------------------------------------------


@dataclass
class _Row:
    """The widgets of one message in the list."""

    container: widgets.Widget
    html: widgets.HTML
    actions: widgets.HBox | None = None
    retry: widgets.Button | None = None

    def close(self) -> None:
        for widget in (self.retry, self.actions, self.html, self.container):
            if widget is not None:
                widget.close()


class ChatPanel:
    """The widgets of a chat panel and how a `ChatView` is drawn on them.

    `on_text(text)` is called (on the kernel's thread) with what the user sent and
    returns whether it was taken, which clears the input; `on_retry(client_msg_id)`,
    `on_banner_action()` and `on_status_action()` report the buttons. `draw` may be
    called from another thread, but from one at a time.
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
    ) -> None:
        self.max_messages = max(1, max_messages)
        self._on_text = on_text
        self._on_retry = on_retry
        self.rows: dict[str, _Row] = {}
        self._shown: list[str] = []
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
        self.input_row = widgets.HBox([self.input, self.send_button])
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

    # -- drawing -------------------------------------------------------------------------------

    def draw(self, view: ChatView, changes: Changes) -> None:
        """Redraw what `changes` names (and pending messages when the connection's state
        flipped, since they mention it)."""
        if self.closed:
            return
        down = view.status in DEAD_STATUSES
        if changes.entries or changes.order or down != self._drawn_down:
            self._draw_messages(view, changes.entries, recheck=down != self._drawn_down)
            self._drawn_down = down
        if changes.chrome:
            self._draw_chrome(view)

    def _draw_messages(self, view: ChatView, changed: set[str], *, recheck: bool) -> None:
        # `recheck`: the connection went down or came back, which pending messages mention.
        down = view.status in DEAD_STATUSES
        entries = view.entries
        visible = entries[-self.max_messages :]
        keys = [entry.key for entry in visible]
        for entry in visible:
            row = self.rows.get(entry.key)
            if row is None:
                self.rows[entry.key] = self._make_row(entry, down)
            elif entry.key in changed or (recheck and entry.delivery is Delivery.PENDING):
                self._update_row(row, entry, down)
        if keys != self._shown:
            for key in set(self.rows) - set(keys):
                self.rows.pop(key).close()
            self._shown = keys
            hidden = len(entries) - len(visible)
            self.more.value = (
                f'<div style="{_FONT};{_SMALL};color:{_MUTED};text-align:center">'
                f"… {hidden} earlier message{'' if hidden == 1 else 's'} not shown</div>"
            )
            self.more.layout.display = "" if hidden else "none"
            rows = [self.rows[key].container for key in reversed(keys)]
            self.messages.children = (
                [self.thinking_row, *rows, self.more]
                if rows
                else [
                    self.thinking_row,
                    self.empty,
                ]
            )

    def _make_row(self, entry: Entry, down: bool) -> _Row:
        html_widget = widgets.HTML(
            entry_html(entry, connection_down=down), layout=widgets.Layout(flex="0 0 auto")
        )
        if entry.delivery is None:
            html_widget.add_class(css.ROW)
            html_widget.add_class(f"chatbridge-{entry.role}")
            return _Row(html_widget, html_widget)
        # A box: the row keeps its natural height only with flex 0 0 auto (see panel_style).
        row = _Row(widgets.VBox([html_widget], layout=widgets.Layout(flex="0 0 auto")), html_widget)
        row.container.add_class(css.ROW)
        row.container.add_class("chatbridge-own")
        self._update_actions(row, entry)
        return row

    def _update_row(self, row: _Row, entry: Entry, down: bool) -> None:
        value = entry_html(entry, connection_down=down)
        if row.html.value != value:
            row.html.value = value
        if row.container is not row.html:
            self._update_actions(row, entry)

    def _update_actions(self, row: _Row, entry: Entry) -> None:
        wanted = entry.delivery is Delivery.FAILED and entry.retry_offered
        if wanted and row.retry is None:
            client_msg_id = entry.client_msg_id or ""
            row.retry = widgets.Button(
                description="Retry",
                button_style="warning",
                tooltip="Send this message again",
                layout=widgets.Layout(width="auto"),
            )
            row.retry.on_click(lambda _: self._on_retry(client_msg_id))
            row.actions = widgets.HBox(
                [row.retry], layout=widgets.Layout(justify_content="flex-end")
            )
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

    def close(self) -> None:
        """Close every widget of the panel (call once nothing draws any more)."""
        self.closed = True
        for row in self.rows.values():
            row.close()
        self.rows.clear()
        for widget in (
            self.banner_button,
            self.banner_text,
            self.banner_box,
            self.thinking_row,
            self.more,
            self.empty,
            self.messages,
            self.input,
            self.send_button,
            self.input_row,
            self.hint,
            self.status_text,
            self.status_button,
            self.status_row,
            self.restarted,
            self.style,
            self.box,
        ):
            widget.close()
