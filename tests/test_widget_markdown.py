# ruff: noqa: F811  (the fixtures of tests/widget_support.py, imported by name)
"""Answers in `ChatWidget` are Markdown, and nothing in them can run in the browser.

The agent (EchoAgent with no prefix) answers with exactly what was sent, so each answer
below is an attacker's text. The checks read the HTML the widget hands the browser (the
value of each message's HTML widget, which ipywidgets puts into the page as innerHTML
with no sanitizing of its own), then put that HTML into headless Chromium the same way.
"""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from jupyter_chatbridge import ChatWidget
from jupyter_chatbridge.ui.markdown import render_markdown

from .chromium import chromium
from .support import Api
from .widget_support import (  # noqa: F401 - fixtures
    WidgetFactory,
    connected,
    idle,
    make_widget,
    messages,
    row_html,
    widget_clock,
)

# What an attack runs: it sets a flag on the window and opens a dialog.
RUN = "window.pwned=1;alert(1)"
ATTACKS = [
    f"<script>{RUN}</script>",
    f'<img src=x onerror="{RUN}">',
    f"[click me](javascript:{RUN})",
    f"[click me](JaVaScRiPt:{RUN})",
    f"[click me](java&#09;script:{RUN})",
    f"<javascript:{RUN}>",
    f"![picture](javascript:{RUN})",
    "[data](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    f'<iframe src="javascript:parent.{RUN}"></iframe>',
    f'<svg onload="{RUN}"><script>{RUN}</script></svg>',
    f'<a href="javascript:{RUN}">a raw link</a>',
    "<style>body { background: rgb(255, 0, 0) }</style>",
    f'<math><mtext><table><mglyph><style><img src=x onerror="{RUN}">',
    f'<details open ontoggle="{RUN}">x</details>',
    f'[title](https://example.com "x\\" onmouseover=\\"{RUN}")',
    f'```\n</code></pre><img src=x onerror="{RUN}">\n```',
    f'`<img src=x onerror="{RUN}">`',
    f'<div\n  onmouseover="{RUN}">\ntext</div>',
]
MARKDOWN = (
    "Intro with *emphasis* and **strong** words.\n\n"
    "- first item\n- second item\n\n"
    "See [the docs](https://example.com/docs).\n\n"
    "```python\nprint(1 < 2)\n```"
)
ALLOWED_TAGS = {
    *("div", "span", "p", "br", "hr", "strong", "em", "del", "code", "pre", "blockquote"),
    *("ul", "ol", "li", "a", "h1", "h2", "h3", "h4", "h5", "h6", "table", "thead", "tbody"),
    *("tr", "th", "td"),
}
LINK_SCHEMES = ("https://", "http://", "mailto:")


class Elements(HTMLParser):
    """Every element of a piece of HTML, as (tag, attributes), as a browser parses it."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[tuple[str, dict[str, str]]] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, {name: value or "" for name, value in attrs}))


def assert_inert(html: str) -> None:
    """Only the tags the panel draws; no event handler, no script URL, no styles but the
    panel's own; links only to the web, in a new tab, without access to the opener."""
    for tag, attrs in Elements(html).found:
        assert tag in ALLOWED_TAGS, (tag, html)
        for name, value in attrs.items():
            assert not name.startswith("on"), (tag, name, html)
            assert "script:" not in value.lower().replace("\t", ""), (tag, name, html)
        if tag == "a":
            assert set(attrs) <= {"href", "title", "target", "rel"}, html
            assert attrs.get("href", "https://").startswith(LINK_SCHEMES), html
            assert (attrs["target"], attrs["rel"]) == ("_blank", "noopener noreferrer"), html


def the_answer(widget: ChatWidget, sent: str) -> str:
    """The drawn HTML of the answer to `sent` (the same text: EchoAgent, no prefix)."""

    def find() -> str:
        entries = widget.view.entries
        for index, entry in enumerate(entries):
            if entry.role == "user" and entry.text == sent:
                answer = entries[index + 1]
                row = widget._panel.rows[answer.key]
                return str(row.html.value)
        raise AssertionError(f"no answer to {sent!r}")

    return widget._on_loop(find)


async def answer_everything(make_widget: WidgetFactory, api: Api) -> ChatWidget:
    """A widget on a session whose agent answered every attack and the Markdown sample."""
    await api.ok("POST", "sessions", body={"sessionId": "xss", "settings": {"prefix": ""}})
    widget = make_widget("xss")
    await connected(widget)
    for text in [*ATTACKS, MARKDOWN]:
        widget.send_message(text)
    await idle(widget)
    return widget


async def test_no_answer_html_can_run_script_and_markdown_renders(
    make_widget: WidgetFactory, api: Api
) -> None:
    widget = await answer_everything(make_widget, api)
    for attack in ATTACKS:
        html = the_answer(widget, attack)
        assert_inert(html)
        tags = {tag for tag, _ in Elements(html).found}
        assert not tags & {"script", "img", "iframe", "svg", "style", "math", "details"}, html
    # Raw HTML is shown as the text it is, and so is the user's own message.
    assert "&lt;script&gt;window.pwned=1;alert(1)&lt;/script&gt;" in the_answer(widget, ATTACKS[0])
    own = row_html(widget, ATTACKS[1])
    assert "&lt;img src=x onerror=" in own and "<img" not in own
    # A script link keeps its text and loses its target; a picture becomes a link to it.
    links = [attrs for tag, attrs in Elements(the_answer(widget, ATTACKS[2])).found if tag == "a"]
    assert links == [{"target": "_blank", "rel": "noopener noreferrer"}]
    assert ">click me</a>" in the_answer(widget, ATTACKS[2])
    picture = the_answer(widget, "![picture](javascript:window.pwned=1;alert(1))")
    assert ">picture</a>" in picture and "href" not in picture

    html = the_answer(widget, MARKDOWN)
    assert_inert(html)
    assert "<em>emphasis</em>" in html and "<strong>strong</strong>" in html
    assert "<li>first item</li><li>second item</li>" in html
    assert (
        '<a href="https://example.com/docs" target="_blank" rel="noopener noreferrer">'
        "the docs</a>" in html
    )
    assert "<pre><code>print(1 &lt; 2)\n</code></pre>" in html
    assert messages(widget)[-1]["text"] == MARKDOWN  # the text itself is kept as sent


async def test_in_chromium_nothing_in_the_answers_runs(
    make_widget: WidgetFactory, api: Api, tmp_path: Path
) -> None:
    widget = await answer_everything(make_widget, api)
    values = widget._on_loop(lambda: [str(row.html.value) for row in widget._panel.rows.values()])
    assert len(values) == 2 * (len(ATTACKS) + 1)
    async with chromium(tmp_path / "profile") as context:
        page = await context.new_page()
        dialogs: list[str] = []

        async def dialog_opened(dialog: Any) -> None:
            dialogs.append(dialog.message)
            await dialog.dismiss()  # or the page would wait for it

        page.on("dialog", dialog_opened)
        await page.set_content("<!doctype html><html><body><div id=chat></div></body></html>")
        # As ipywidgets' HTML view does: each value becomes an element's innerHTML. Then a
        # broken image that does run, once it fired, shows that the error handlers of any
        # image the answers had would have run too.
        await page.evaluate(INSERT, values)
        await page.wait_for_function("window.control === 1")
        await page.evaluate(PROVOKE)
        await page.evaluate("() => new Promise((done) => requestAnimationFrame(() => done()))")
        found = await page.evaluate(INSPECT)
        assert dialogs == [] and found["pwned"] is None
        assert found["dangerous"] == [] and found["background"] != "rgb(255, 0, 0)"
        assert found["links"] and all(href.startswith(LINK_SCHEMES) for href in found["links"])
        assert found["rendered"] == {"li": True, "em": True, "a": True, "code": True}


INSERT = """(values) => {
  const chat = document.getElementById('chat');
  for (const value of values) {
    const row = document.createElement('div');
    row.innerHTML = value;
    chat.appendChild(row);
  }
  const control = document.createElement('div');
  control.innerHTML = '<img src="x" onerror="window.control = 1">';
  document.body.appendChild(control);
}"""
# What a user does to an answer: point at everything, click every link that has no web
# address (web links would leave the page).
PROVOKE = """() => {
  const chat = document.getElementById('chat');
  for (const element of chat.querySelectorAll('*')) {
    element.dispatchEvent(new MouseEvent('mouseover', {bubbles: true}));
  }
  for (const link of chat.querySelectorAll('a')) {
    if (!/^(https?|mailto):/.test(link.getAttribute('href') || '')) link.click();
  }
}"""
INSPECT = """() => {
  const chat = document.getElementById('chat');
  const has = (selector) => chat.querySelector(selector) !== null;
  return {
    pwned: window.pwned === undefined ? null : window.pwned,
    dangerous: [...chat.querySelectorAll('script, img, iframe, svg, style, math, object, embed')]
      .map((element) => element.outerHTML),
    background: getComputedStyle(document.body).backgroundColor,
    links: [...chat.querySelectorAll('a[href]')].map((link) => link.getAttribute('href')),
    rendered: {
      li: has('li'), em: has('em'),
      a: has('a[href^="https://"][target="_blank"][rel="noopener noreferrer"]'),
      code: has('pre > code'),
    },
  };
}"""


# -- the renderer alone -------------------------------------------------------------------


@pytest.mark.parametrize("attack", ATTACKS)
def test_render_markdown_leaves_nothing_that_runs(attack: str) -> None:
    assert_inert(render_markdown(attack))


def test_render_markdown_keeps_lines_tables_and_numbering() -> None:
    assert render_markdown("one\ntwo") == "<p>one<br>\ntwo</p>"  # a newline is a new line
    table = render_markdown("| a | b |\n|:--|--:|\n| 1 | 2 |")
    assert '<th style="text-align:left">a</th>' in table and "<td" in table
    assert render_markdown("3. three\n4. four").startswith('<ol start="3"><li>three</li>')
    assert render_markdown("![a cat](https://example.com/cat.png)") == (
        '<p><a href="https://example.com/cat.png" target="_blank" '
        'rel="noopener noreferrer">a cat</a></p>'
    )
    # Whatever a style attribute says, only a table cell's alignment is kept.
    assert_inert(render_markdown("| a |\n|:-:|\n| b |"))
    assert render_markdown("") == ""
