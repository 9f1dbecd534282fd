"""A widget in JupyterLab's right-hand area, through jupyter-widgets' `sidecar` package.

`sidecar` is the optional extra `jupyter_chatbridge[sidebar]`: a `Sidecar` is an Output
widget whose JupyterLab extension (prebuilt for JupyterLab 4) opens it as a tab in the
right-hand area as soon as it is made.
"""

from __future__ import annotations

from typing import Any, Final

import ipywidgets as widgets  # type: ignore[import-untyped]

SIDEBAR_EXTRA: Final = 'pip install "jupyter_chatbridge[sidebar]"'


class SidebarUnavailable(ImportError):
    """The `sidecar` package is not installed."""


def open_sidebar(widget: widgets.DOMWidget, title: str) -> Any:
    """A new Sidecar tab titled `title`, showing `widget` (another view of the same widget
    model, like a cell's output); returns the `sidecar.Sidecar`. Call it on the kernel's
    thread (from a cell): it makes a widget."""
    try:
        from sidecar import Sidecar  # type: ignore[import-untyped]
    except ImportError as exc:
        raise SidebarUnavailable(
            f"show_in_sidebar needs the sidecar package: {SIDEBAR_EXTRA}"
        ) from exc
    sidebar = Sidecar(title=title, anchor="right")
    # The widget's own display data, as `display(widget)` would send it: no IPython shell
    # or output capture needed, so this works from any code in the kernel.
    shown = {"output_type": "display_data", "data": widget._repr_mimebundle_(), "metadata": {}}
    sidebar.outputs = (shown,)
    return sidebar
