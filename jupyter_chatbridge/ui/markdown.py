"""An agent's answer as sanitized HTML: Markdown rendered by mistune, then cleaned by nh3.

ipywidgets' HTML widget puts its value into the page as `innerHTML`, unsanitized, so
whatever this returns reaches the browser as it is. Two layers keep it inert:

- mistune renders with `escape=True`: HTML written in the answer (`<script>`, `<img
  onerror=…>`, `<iframe>`) is shown as text, never parsed as markup, and unsafe link
  schemes (`javascript:`, `data:`, …) are replaced.
- nh3 (the Rust `ammonia` sanitizer) then keeps only the tags and attributes the
  renderer is meant to produce, links only to http(s) and mailto, opened in a new tab
  with `rel="noopener noreferrer"`; no `style` but a table cell's `text-align`, no class
  (JupyterLab's own classes could restyle the page), no event handlers.

Images are drawn as links: an image would be fetched as soon as the answer is shown,
which lets a prompt-injected answer send data to any server in its URL.
"""

from __future__ import annotations

import re
from typing import Any, Final

import mistune
import nh3

__all__ = ["render_markdown"]

_TAGS: Final = frozenset(
    {"p", "br", "hr", "strong", "em", "del", "code", "pre", "blockquote", "ul", "ol", "li"}
    | {"a", "h1", "h2", "h3", "h4", "h5", "h6", "table", "thead", "tbody", "tr", "th", "td"}
)
_ATTRIBUTES: Final = {
    "a": {"href", "title"},
    "ol": {"start"},
    "th": {"style"},
    "td": {"style"},
}
_URL_SCHEMES: Final = frozenset({"http", "https", "mailto"})
# Whitespace after a block tag: the browser ignores it, but it would count as lines in
# the bubble's text (and mistune indents table cells). Answer text is escaped by then,
# so every tag here is one the renderer wrote.
_AFTER_BLOCK_TAG: Final = re.compile(
    r"(</?(?:p|pre|ul|ol|li|blockquote|h[1-6]|table|thead|tbody|tr|th|td|hr)\b[^>]*>)\s+"
)


class _Renderer(mistune.HTMLRenderer):
    """mistune's HTML renderer, with images as links to them (never fetched)."""

    def image(self, text: str, url: str, title: Any = None) -> str:
        return str(self.link(text or mistune.escape(url), url, title))


# Soft line breaks are line breaks (`hard_wrap`), as in chat apps and as the panel showed
# answers before Markdown: a model's single newlines are meant as new lines.
_MARKDOWN: Final = mistune.create_markdown(
    renderer=_Renderer(escape=True),
    hard_wrap=True,
    plugins=["strikethrough", "table", "url"],
)


def render_markdown(text: str) -> str:
    """`text` (Markdown) as HTML that is safe to hand to the browser as it is."""
    rendered = _MARKDOWN(text)
    if not isinstance(rendered, str):  # mistune's HTML renderer always returns text
        raise TypeError(f"mistune returned {type(rendered).__name__}, not HTML")
    return nh3.clean(
        _AFTER_BLOCK_TAG.sub(r"\1", rendered).strip(),
        tags=set(_TAGS),
        attributes={tag: set(names) for tag, names in _ATTRIBUTES.items()},
        url_schemes=set(_URL_SCHEMES),
        url_relative="deny",
        link_rel="noopener noreferrer",
        set_tag_attribute_values={"a": {"target": "_blank"}},
        filter_style_properties={"text-align"},
        strip_comments=True,
    )
