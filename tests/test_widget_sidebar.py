# ruff: noqa: F811  (the fixtures of tests/widget_support.py, imported by name)
"""`ChatWidget.show_in_sidebar()`: the panel in a `sidecar.Sidecar` (JupyterLab's right-hand
area; tests/lab checks it there), or one clear error naming the extra to install."""

from __future__ import annotations

import sys

import pytest
from sidecar import Sidecar

from jupyter_chatbridge.ui.sidebar import SidebarUnavailable

from .widget_support import (  # noqa: F401 - fixtures
    WidgetFactory,
    close,
    connected,
    make_widget,
    widget_clock,
)

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


async def test_show_in_sidebar_puts_the_panel_in_a_sidecar_titled_by_its_session(
    make_widget: WidgetFactory,
) -> None:
    widget = make_widget("notes")
    await connected(widget)
    sidebar = widget.show_in_sidebar()
    assert isinstance(sidebar, Sidecar)
    assert (sidebar.title, sidebar.anchor) == ("Chat: notes", "right")
    (shown,) = sidebar.outputs
    assert shown["output_type"] == "display_data"
    assert shown["data"][WIDGET_VIEW]["model_id"] == widget.model_id  # this very widget
    # Again: a new tab (with the title asked for), the old one closed.
    again = widget.show_in_sidebar("My chat")
    assert again.title == "My chat" and sidebar.comm is None and again.comm is not None
    await close(widget)
    assert again.comm is None  # closing the panel closes its tab


async def test_without_the_extra_it_says_what_to_install(
    make_widget: WidgetFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    widget = make_widget()
    monkeypatch.setitem(sys.modules, "sidecar", None)  # as if it were not installed
    with pytest.raises(SidebarUnavailable) as raised:
        widget.show_in_sidebar()
    assert isinstance(raised.value, ImportError)
    assert str(raised.value) == (
        'show_in_sidebar needs the sidecar package: pip install "jupyter_chatbridge[sidebar]"'
    )
    assert widget._sidebar is None
