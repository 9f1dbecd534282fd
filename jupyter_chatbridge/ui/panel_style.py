"""The chat panel's CSS, shipped in the panel itself (a `<style>` in a hidden HTML widget).

Three things need a style sheet rather than inline styles:

- Every message row must keep its natural height. ipywidgets' boxes are flex items with
  `overflow: auto`, which lets a flex container shrink them to nothing; the message list
  is a column of such boxes with a fixed maximum height.
- After a kernel restart the kernel side of the panel is gone, so only the front end can
  say so. The JupyterLab widget manager then marks every widget view it drew with the
  class `jupyter-widgets-disconnected` (ipywidgets 8: `DOMWidgetView._comm_live_update`,
  called when the manager's `disconnect()` sets `comm_live = false` on "restarting").
  The rules below turn that class into a plain notice in place of the input and the
  status line, which would otherwise still say "connected".
- An answer's Markdown: its HTML is sanitized and carries no style of its own, so its
  paragraphs, lists, code blocks and tables are styled here, within the bubble.
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
MARKDOWN: Final = "chatbridge-md"
STOP: Final = "chatbridge-stop"
STOPPED: Final = "chatbridge-stopped"
STOP_FAILED: Final = "chatbridge-stop-failed"

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
.{MARKDOWN} > :first-child {{ margin-top: 0; }}
.{MARKDOWN} > :last-child {{ margin-bottom: 0; }}
.{MARKDOWN} p, .{MARKDOWN} ul, .{MARKDOWN} ol, .{MARKDOWN} pre, .{MARKDOWN} blockquote,
.{MARKDOWN} table {{ margin: 0 0 0.5em; }}
.{MARKDOWN} ul, .{MARKDOWN} ol {{ padding-left: 1.5em; }}
.{MARKDOWN} h1, .{MARKDOWN} h2, .{MARKDOWN} h3, .{MARKDOWN} h4, .{MARKDOWN} h5,
.{MARKDOWN} h6 {{ font-size: 1.05em; margin: 0.4em 0 0.3em; }}
.{MARKDOWN} h1 {{ font-size: 1.25em; }}
.{MARKDOWN} h2 {{ font-size: 1.15em; }}
.{MARKDOWN} code {{ font-family: var(--jp-code-font-family, monospace); font-size: 0.92em; }}
.{MARKDOWN} :not(pre) > code {{
  padding: 0 3px; border-radius: 3px; background: var(--jp-layout-color3, #e0e0e0); }}
.{MARKDOWN} pre {{
  white-space: pre; overflow-x: auto; max-width: 100%; padding: 6px 8px; border-radius: 4px;
  background: var(--jp-layout-color1, #ffffff);
  border: 1px solid var(--jp-border-color2, #e0e0e0); }}
.{MARKDOWN} blockquote {{
  margin-left: 0; padding-left: 8px; color: var(--jp-ui-font-color2, #616161);
  border-left: 3px solid var(--jp-border-color1, #bdbdbd); }}
.{MARKDOWN} table {{
  display: block; max-width: 100%; overflow-x: auto; border-collapse: collapse; }}
.{MARKDOWN} th, .{MARKDOWN} td {{
  padding: 2px 6px; border: 1px solid var(--jp-border-color2, #e0e0e0); }}
.{MARKDOWN} a {{ color: var(--jp-content-link-color, #1976d2); text-decoration: underline; }}
/* ipywidgets' broken-link icon once (on the ChatWidget itself), not on every part. */
.{PANEL} .{DISCONNECTED}::before, .{PANEL}.{DISCONNECTED}::before {{ display: none; }}
"""
