"""The widgets of one message in the chat panel's list, made and closed on the kernel's
thread (see `kernel_thread`); drawing only changes their values."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import ipywidgets as widgets  # type: ignore[import-untyped]


@dataclass
class Row:
    """The widgets of one message in the list."""

    container: widgets.Widget
    html: widgets.HTML
    actions: widgets.HBox | None = None
    retry: widgets.Button | None = None

    def close(self) -> None:
        for widget in (self.retry, self.actions, self.html, self.container):
            if widget is not None:
                close_widget(widget)


def close_widget(widget: widgets.Widget) -> None:
    """Close a widget with its layout and style, which are widgets (comms) of their own."""
    for part in (getattr(widget, "layout", None), getattr(widget, "style", None)):
        if isinstance(part, widgets.Widget):
            part.close()
    widget.close()


def close_rows(rows: list[Row]) -> None:
    """Close the widgets of these rows (on the kernel's thread)."""
    for row in rows:
        row.close()


def make_row(
    value: str,
    classes: list[str],
    client_msg_id: str | None,
    on_retry: Callable[[str], None],
) -> Row:
    """One message's widgets (kernel thread). Own messages (with a `client_msg_id`) get
    their Retry button now, shown only when needed, so that drawing never makes a widget."""
    html_widget = widgets.HTML(value, layout=widgets.Layout(flex="0 0 auto"))
    if client_msg_id is None:
        for name in classes:
            html_widget.add_class(name)
        return Row(html_widget, html_widget)
    # A box: the row keeps its natural height only with flex 0 0 auto (see panel_style).
    row = Row(widgets.VBox([html_widget], layout=widgets.Layout(flex="0 0 auto")), html_widget)
    for name in classes:
        row.container.add_class(name)
    row.retry = widgets.Button(
        description="Retry",
        button_style="warning",
        tooltip="Send this message again",
        layout=widgets.Layout(width="auto"),
    )
    row.retry.on_click(lambda _: on_retry(client_msg_id))
    row.actions = widgets.HBox([row.retry], layout=widgets.Layout(justify_content="flex-end"))
    return row
