"""The notebook panel as a user sees it: ChatWidget in a real JupyterLab, in Chromium.

Every check measures the page (element sizes, text, presence); none compares pixels.
Screenshots of each state go to test-artifacts/lab/.
"""

from __future__ import annotations

from typing import Any

from playwright.sync_api import expect

from jupyter_chatbridge.testing.lab import copy_to_docs

from .conftest import ROOT

# Lines of the answers, one exchange each: short and long ones mixed.
ANSWER_LINES = [1, 20, 3, 12, 1, 7, 20, 2, 15, 5]
CODE_CELL = 'w.send_message("```python\\ndef answer():\\n    return 42\\n```")'
LONG_TOKEN = "x=1;" * 60  # code with no space to break at

# Every row of a panel, scrolled into view one by one, measured where it is shown.
MEASURE_ROWS = """(panel) => {
  const list = panel.querySelector('.chatbridge-messages');
  // The list is column-reverse: newest first in the DOM, so reverse to read it in order.
  return [...panel.querySelectorAll('.chatbridge-row')].reverse().map((row) => {
    row.scrollIntoView({block: 'nearest'});
    const box = list.getBoundingClientRect();
    const bubble = row.querySelector('.chatbridge-bubble');
    const delivery = row.querySelector('.chatbridge-delivery');
    const b = bubble.getBoundingClientRect();
    const r = row.getBoundingClientRect();
    const style = getComputedStyle(bubble);
    const inside = (rect) => rect.top >= box.top - 1 && rect.bottom <= box.bottom + 1;
    const onTop = (el) => {
      const rect = el.getBoundingClientRect();
      const hit = document.elementFromPoint(rect.left + rect.width / 2, rect.top + rect.height / 2);
      return el.contains(hit);
    };
    const d = delivery ? delivery.getBoundingClientRect() : null;
    return {
      own: row.classList.contains('chatbridge-own'),
      text: bubble.textContent,
      lines: bubble.textContent.split('\\n').length,
      lineHeight: parseFloat(style.lineHeight),
      padding: parseFloat(style.paddingTop) + parseFloat(style.paddingBottom),
      rowHeight: r.height,
      rowClipped: row.scrollHeight > row.clientHeight + 1,
      bubbleHeight: b.height,
      bubbleFits: b.right <= box.right + 1 && b.left >= box.left - 1,
      bubbleVisible: inside(b) && onTop(bubble),
      delivery: delivery ? delivery.textContent : null,
      deliveryHeight: d ? d.height : null,
      deliveryVisible: d ? inside(d) && onTop(delivery) : null,
    };
  });
}"""
# Whether anything in the panel sticks out sideways.
OVERFLOWS = """(panel) => {
  const list = panel.querySelector('.chatbridge-messages');
  const own = panel.getBoundingClientRect();
  return {
    list: list.scrollWidth - list.clientWidth,
    panel: [...panel.querySelectorAll('*')].some((el) => {
      const r = el.getBoundingClientRect();
      return r.width > 0 && (r.right > own.right + 1 || r.left < own.left - 1);
    }),
  };
}"""


def measure(panel: Any) -> list[dict[str, Any]]:
    return panel.evaluate(MEASURE_ROWS)  # type: ignore[no-any-return]


def assert_rows_have_natural_height(rows: list[dict[str, Any]]) -> None:
    """Each message is drawn with all its lines; each own message and its delivery line is
    visible, unclipped and uncovered when scrolled into view."""
    assert rows
    for row in rows:
        natural = row["lines"] * row["lineHeight"] + row["padding"]
        assert row["bubbleHeight"] >= natural - 1, row
        assert not row["rowClipped"], row
        assert row["bubbleFits"], row
        if row["own"]:
            assert row["bubbleVisible"], row
            assert row["delivery"] == "✓ delivered", row
            assert row["deliveryHeight"] >= row["lineHeight"] * 0.6, row
            assert row["deliveryVisible"], row
            assert row["rowHeight"] >= row["bubbleHeight"] + row["deliveryHeight"] - 1, row


def long_conversation(notebook: Any) -> None:
    """Ten exchanges typed into the panel, one long message and one code block."""
    for number, lines in enumerate(ANSWER_LINES, start=1):
        notebook.send(f"Question {number}: please answer in {lines} lines.")
        notebook.wait_delivered(number)
    notebook.send("A long message: " + " ".join(["words that wrap across the bubble"] * 12))
    notebook.wait_delivered(len(ANSWER_LINES) + 1)
    notebook.send(f"A long line of code: {LONG_TOKEN}")
    notebook.wait_delivered(len(ANSWER_LINES) + 2)
    notebook.run_cell(1)  # a multi-line code block, sent from code as if typed
    notebook.wait_delivered(len(ANSWER_LINES) + 3)


def test_a_long_conversation_keeps_every_message_at_its_natural_height(
    open_notebook: Any,
) -> None:
    notebook = open_notebook(CODE_CELL, "import time\ntime.sleep(60)")
    notebook.start_panel()
    long_conversation(notebook)
    rows = measure(notebook.panel)
    own = [row for row in rows if row["own"]]
    assert len(own) == len(ANSWER_LINES) + 3
    answers = [row["lines"] for row in rows if not row["own"]]
    assert answers[: len(ANSWER_LINES)] == ANSWER_LINES
    assert any(row["lines"] == 4 for row in own)  # the code block, all of it
    assert_rows_have_natural_height(rows)
    assert notebook.panel.evaluate(OVERFLOWS) == {"list": 0, "panel": False}
    notebook.shot("long-conversation")

    # While a cell keeps the kernel busy, Enter in the panel is handled and the answer
    # streams in (ipykernel 7 handles comm messages while a cell runs).
    notebook.run_cell(2)
    expect(notebook.page.locator(".jp-Cell .jp-InputPrompt").nth(2)).to_have_text("[*]:")
    notebook.send("Does the answer stream in while a cell keeps the kernel busy? 6 lines")
    answer = notebook.panel.locator(".chatbridge-agent .chatbridge-bubble").filter(
        has_text="Echo: Does the answer stream in"
    )
    expect(answer).to_contain_text("line 6: more of the answer")
    notebook.wait_delivered(len(ANSWER_LINES) + 4)
    assert notebook.cell_running(2)  # the sleep(60) is still running
    notebook.page.mouse.click(1000, 650)  # the text cursor out of the picture
    copy_to_docs(notebook.shot("busy-kernel"), ROOT / "docs" / "widget.png")
    notebook.page.click('[data-command="notebook:interrupt-kernel"]')
    notebook.wait_for_kernel("Idle")
