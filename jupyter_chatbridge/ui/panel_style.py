"""The chat panel's CSS, shipped in the panel itself (a `<style>` in a hidden HTML widget).

Two things need a style sheet rather than inline styles:

- Every message row must keep its natural height. ipywidgets' boxes are flex items with
  `overflow: auto`, which lets a flex container shrink them to nothing; the message list
  is a column of such boxes with a fixed maximum height.
- After a kernel restart the kernel side of the panel is gone, so only the front end can
  say so. The JupyterLab widget manager then marks every widget view it drew with the
  class `jupyter-widgets-disconnected` (ipywidgets 8: `DOMWidgetView._comm_live_update`,
  called when the manager's `disconnect()` sets `comm_live = false` on "restarting").
  The rules below turn that class into a plain notice in place of the input and the
  status line, which would otherwise still say "connected".
"""

from __future__ import annotations

from typing import Final

PANEL: Final = "chatbridge-panel"
MESSAGES: Final = "chatbridge-messages"
ROW: Final = "chatbridge-row"
INPUT_ROW: Final = "chatbridge-input"
STATUS_ROW: Final = "chatbridge-status"
BANNER: Final = "chatbridge-banner"
THINKING: Final = "chatbridge-thinking"
RESTARTED: Final = "chatbridge-restarted"
DISCONNECTED: Final = "jupyter-widgets-disconnected"

RESTARTED_TEXT: Final = (
    "This panel's kernel was restarted, so the panel is no longer connected and "
    "takes no input. Run the cell again to make a new panel."
)

CSS: Final = f"""
.{MESSAGES} > * {{ flex: 0 0 auto !important; min-height: min-content; }}
.{MESSAGES} .{ROW} {{ overflow: visible; }}
.{PANEL} {{ min-width: 0; }}
.{RESTARTED} {{ display: none !important; }}
.{PANEL}.{DISCONNECTED} .{RESTARTED} {{ display: block !important; }}
.{PANEL}.{DISCONNECTED} .{INPUT_ROW},
.{PANEL}.{DISCONNECTED} .{STATUS_ROW},
.{PANEL}.{DISCONNECTED} .{THINKING},
.{PANEL}.{DISCONNECTED} .{BANNER} {{ display: none !important; }}
.{PANEL}.{DISCONNECTED} .{MESSAGES} {{ opacity: 0.6; }}
/* ipywidgets' broken-link icon once (on the ChatWidget itself), not on every part. */
.{PANEL} .{DISCONNECTED}::before, .{PANEL}.{DISCONNECTED}::before {{ display: none; }}
"""
