"""The chat panel's HTML (pure functions): messages, delivery lines, status, banner.

An HTML widget renders whatever it is given: every text is escaped, except an answer's
body, which is Markdown rendered and sanitized (`markdown.render_markdown`).
"""

from __future__ import annotations

import html

from ..client.stream import ConnectionStatus
from . import panel_style as css
from .chatview import Banner, ChatView, Delivery, Entry
from .markdown import render_markdown

_FONT = "font-family:var(--jp-ui-font-family,sans-serif);line-height:1.45"
_SMALL = "font-size:var(--jp-ui-font-size0,11px)"
_MUTED = "var(--jp-ui-font-color2,#757575)"
_WARN = "var(--jp-warn-color0,#b26b00)"
_ERROR = "var(--jp-error-color1,#d32f2f)"
_OK = "var(--jp-success-color1,#388e3c)"
_BUBBLE = "padding:6px 10px;max-width:85%;overflow-wrap:anywhere"
_USER_BUBBLE = (
    f"{_BUBBLE};white-space:pre-wrap;background:var(--jp-brand-color3,#c6dbf5);color:#111;"
    "border-radius:12px 12px 2px 12px"
)
# An answer is Markdown (its own blocks and line breaks); min-width 0 lets a wide code block
# scroll inside the bubble instead of widening it.
_AGENT_BUBBLE = (
    f"{_BUBBLE};min-width:0;white-space:normal;background:var(--jp-layout-color2,#eeeeee);"
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


def entry_html(
    entry: Entry,
    *,
    connection_down: bool = False,
    body: str | None = None,
    stop_error: str | None = None,
) -> str:
    """One message as HTML: a bubble (user right, agent left) or a centred notice.

    An answer's `body` is its rendered Markdown (rendered here when not given), followed
    by how it ended when it was stopped, and why this panel's Stop failed, if it did.
    """
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
    body = render_markdown(entry.text) if body is None else body
    if not entry.done and not entry.error:
        cursor = f'<span style="color:{_MUTED}">▍</span>'
        # At the end of the last paragraph, where the next words will appear.
        body = f"{body[:-4]}{cursor}</p>" if body.endswith("</p>") else body + cursor
    if not body:
        body = f'<span style="color:{_MUTED}">…</span>'
    notes = ""
    if entry.error:
        notes += (
            f'<div style="{_SMALL};color:{_ERROR}">✗ the agent failed: {_text(entry.error)}</div>'
        )
    if entry.ended == "stopped":
        notes += f'<div class="{css.STOPPED}" style="{_SMALL};color:{_MUTED}">■ stopped</div>'
    elif stop_error:
        notes += (
            f'<div class="{css.STOP_FAILED}" style="{_SMALL};color:{_ERROR}">'
            f"✗ could not stop: {_text(stop_error)}</div>"
        )
    return (
        f'<div style="{_FONT};margin:3px 0">'
        f'<div style="display:flex;justify-content:flex-start">'
        f'<div class="chatbridge-bubble {css.MARKDOWN}" style="{_AGENT_BUBBLE}">{body}</div></div>'
        f"{notes}</div>"
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


def row_classes(entry: Entry) -> list[str]:
    """The CSS classes of a message's row (own messages carry their delivery line)."""
    return [css.ROW, "chatbridge-own" if entry.delivery is not None else f"chatbridge-{entry.role}"]


def waiting_rows_html(rows: list[tuple[Entry, str]]) -> str:
    """Messages whose widgets are not made yet, each with its `entry_html`, drawn as the
    rows will be (newest first in a column-reverse box, like the list itself)."""
    drawn = "".join(
        f'<div class="{" ".join(row_classes(entry))}">{value}</div>'
        for entry, value in reversed(rows)
    )
    return f'<div style="display:flex;flex-direction:column-reverse">{drawn}</div>'
