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
# A fenced block on its own lines, so that the echo ("Echo: Some code:" first) is Markdown
# with a code block in it.
CODE_CELL = '_ = w.send_message("Some code:\\n```python\\ndef answer():\\n    return 42\\n```")'
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


def question(number: int) -> str:
    return f"Question {number}: please answer in {ANSWER_LINES[number - 1]} lines."


def long_conversation(notebook: Any) -> None:
    """Exchanges 2 to 10 typed into the panel, one long message and one code block."""
    for number in range(2, len(ANSWER_LINES) + 1):
        notebook.send(question(number))
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
    notebook = open_notebook(
        CODE_CELL,
        "import time\ntime.sleep(60)",
        "import time\ntime.sleep(3)",
        session="demo",
        height=800,
    )
    notebook.start_panel()
    # A new panel's first message waits for a running cell (ipykernel routes a widget's
    # messages to where the kernel last updated it: the cell that made it).
    notebook.run_cell(3)
    expect(notebook.cells.nth(3).locator(".jp-InputPrompt")).to_have_text("[*]:")
    notebook.send(question(1))
    notebook.wait_delivered(1)
    assert not notebook.cell_running(3)
    long_conversation(notebook)
    rows = measure(notebook.panel)
    own = [row for row in rows if row["own"]]
    assert len(own) == len(ANSWER_LINES) + 3
    answers = [row["lines"] for row in rows if not row["own"]]
    assert answers[: len(ANSWER_LINES)] == ANSWER_LINES
    assert any(row["lines"] == 5 for row in own)  # the code block, all of it
    code = notebook.panel.locator(".chatbridge-agent .chatbridge-bubble pre code")
    expect(code).to_have_text("def answer():\n    return 42\n")  # the answer's, as code
    assert_rows_have_natural_height(rows)
    assert notebook.panel.evaluate(OVERFLOWS) == {"list": 0, "panel": False}
    notebook.shot("long-conversation")

    # After that, while a cell keeps the kernel busy, Enter in the panel is handled and the
    # answer streams in (JupyterLab sends widget messages over an ipykernel 7 subshell).
    notebook.run_cell(2)
    expect(notebook.cells.nth(2).locator(".jp-InputPrompt")).to_have_text("[*]:")
    notebook.send("Does the answer stream in while a cell keeps the kernel busy? 6 lines")
    answer = notebook.panel.locator(".chatbridge-agent .chatbridge-bubble").filter(
        has_text="Echo: Does the answer stream in"
    )
    expect(answer).to_contain_text("line 6: more of the answer")
    notebook.wait_delivered(len(ANSWER_LINES) + 4)
    assert notebook.cell_running(2)  # the sleep(60) is still running
    # For the picture: the newest messages (the measuring scrolled the list), the cell on top.
    notebook.panel.locator(".chatbridge-messages").evaluate("(list) => { list.scrollTop = 0; }")
    notebook.page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-WindowedPanel-outer").evaluate(
        "(notebook) => { notebook.scrollTop = 0; }"
    )
    notebook.page.evaluate("document.activeElement.blur()")  # no text cursor in the picture
    copy_to_docs(notebook.shot("busy-kernel"), ROOT / "docs" / "widget.png")
    notebook.page.click('[data-command="notebook:interrupt-kernel"]')
    notebook.wait_for_kernel("Idle")


def exchange(notebook: Any, text: str, count: int, panel: Any = None) -> None:
    """Send `text` from a panel and wait for its answer (`count` delivered in all)."""
    root = panel or notebook.panel
    notebook.send(text, root)
    notebook.wait_delivered(count, root)
    expect(root.get_by_text(f"Echo: {text}")).to_be_visible()


def test_a_narrow_notebook_keeps_messages_whole_and_inside_the_panel(open_notebook: Any) -> None:
    notebook = open_notebook(width=400, height=700)
    notebook.start_panel()
    for number, lines in enumerate([3, 1, 12], start=1):
        exchange(notebook, f"Narrow {number}: {lines} lines, " + "long words " * 8, number)
    exchange(notebook, f"Code: {LONG_TOKEN}", 4)
    panel_width = notebook.panel.evaluate("(panel) => panel.getBoundingClientRect().width")
    assert panel_width <= 400
    assert_rows_have_natural_height(measure(notebook.panel))
    assert notebook.panel.evaluate(OVERFLOWS) == {"list": 0, "panel": False}
    expect(
        notebook.panel.locator(".chatbridge-input").get_by_role("button", name="Send")
    ).to_be_visible()
    notebook.shot("narrow-notebook")


def test_the_output_view_is_a_second_working_panel_on_the_same_widget(
    open_notebook: Any,
) -> None:
    notebook = open_notebook()
    notebook.start_panel()
    exchange(notebook, "From the notebook: 5 lines", 1)
    notebook.cells.first.locator(".jp-OutputArea-output").click(button="right")
    notebook.page.get_by_text("Create New View for Cell Output").click()
    views = notebook.page.locator(".chatbridge-panel")
    expect(views).to_have_count(2)
    output_view = views.nth(1)
    expect(output_view.get_by_text("Echo: From the notebook: 5 lines")).to_be_visible()
    for number in range(1, 5):
        exchange(
            notebook, f"From the output view {number}: {number * 4} lines", number + 1, output_view
        )
    # The same widget: what one view sent, the other shows.
    expect(views.nth(0).get_by_text("From the output view 4: 16 lines").first).to_be_attached()
    assert_rows_have_natural_height(measure(output_view))
    assert output_view.evaluate(OVERFLOWS) == {"list": 0, "panel": False}
    notebook.shot("output-view")


def test_a_deleted_session_shows_its_banner_and_action_only_and_starts_again(
    open_notebook: Any,
) -> None:
    notebook = open_notebook()
    notebook.start_panel()
    exchange(notebook, "Before the delete", 1)
    driver = notebook.lab.session_driver(notebook.session)
    notebook.lab.api("DELETE", f"chatbridge/api/sessions/{notebook.session}")
    panel = notebook.panel
    banner = panel.locator(".chatbridge-banner")
    expect(banner).to_contain_text(f"Session “{notebook.session}” no longer exists")
    expect(banner.get_by_role("button", name="Start a new session")).to_be_visible()
    # One status for one cause: no Take over, no reason code, no spinner.
    expect(panel.get_by_role("button", name="Take over")).to_have_count(0)
    expect(panel.locator(".chatbridge-status button")).to_be_hidden()
    text = panel.inner_text()
    assert "session_ended" not in text and "driving" not in text, text
    expect(panel.locator(".chatbridge-thinking")).to_be_hidden()
    notebook.shot("session-deleted")

    banner.get_by_role("button", name="Start a new session").click()
    expect(banner).to_be_hidden()
    expect(panel.get_by_text(f"New session “{notebook.session}”")).to_be_visible()
    exchange(notebook, "After the new start", 2)
    assert notebook.lab.session_driver(notebook.session) == driver  # the same panel drives
    history = notebook.lab.api("GET", f"chatbridge/api/sessions/{notebook.session}/events")
    texts = [event.get("text") for event in history["events"] if event["type"] == "user_message"]
    assert texts == ["After the new start"]
    notebook.shot("session-started-again")


def test_after_a_kernel_restart_the_old_panel_says_so_and_a_rerun_makes_a_new_one(
    open_notebook: Any,
) -> None:
    notebook = open_notebook()
    notebook.start_panel()
    exchange(notebook, "Before the restart", 1)
    old_cid = notebook.lab.session_driver(notebook.session)
    notebook.page.click('[data-command="notebook:restart-kernel"]')
    notebook.page.locator(".jp-Dialog .jp-mod-accept").click()
    panel = notebook.panel
    notice = panel.locator(".chatbridge-restarted")
    expect(notice).to_be_visible()
    expect(notice).to_contain_text("kernel was restarted")
    expect(notice).to_contain_text("Run the cell again to make a new panel")
    # It refuses input visibly: no input to type into, no status that still says connected.
    expect(panel.locator(".chatbridge-input")).to_be_hidden()
    expect(panel.locator(".chatbridge-status")).to_be_hidden()
    expect(panel.get_by_text("Echo: Before the restart")).to_be_visible()  # still readable
    notebook.wait_for_kernel("Idle")
    notebook.shot("kernel-restarted")

    notebook.start_panel()  # run the cell again: a new widget, a new connection
    expect(notebook.page.locator(".chatbridge-panel")).to_have_count(1)
    expect(notebook.panel.locator(".chatbridge-restarted")).to_be_hidden()
    expect(notebook.panel.get_by_text("Echo: Before the restart")).to_be_visible()  # history
    exchange(notebook, "After the restart", 1)
    new_cid = notebook.lab.session_driver(notebook.session)
    assert new_cid is not None and new_cid != old_cid
    notebook.shot("kernel-restarted-cell-run-again")


def test_without_comms_over_subshells_enter_waits_for_the_running_cell(
    open_notebook: Any, lab: Any
) -> None:
    # What a kernel without subshells (ipykernel 6) gives: JupyterLab then sends widget
    # messages on the main shell, behind the running cell. (With subshells, the default,
    # the same steps deliver at once: see the long-conversation test.)
    settings = lab.root / ".settings" / "@jupyterlab" / "apputils-extension"
    setting = settings / "kernels-settings.jupyterlab-settings"
    setting.write_text('{"commsOverSubshells": "disabled"}')
    try:
        notebook = open_notebook("import time\ntime.sleep(4)")
    finally:
        setting.unlink()
    notebook.start_panel()
    exchange(notebook, "Sent while idle", 1)
    notebook.run_cell(1)
    expect(notebook.cells.nth(1).locator(".jp-InputPrompt")).to_have_text("[*]:")
    notebook.send("Sent while the cell runs")
    notebook.wait_delivered(2)
    assert not notebook.cell_running(1)  # delivered only once the cell had finished
    expect(notebook.panel.get_by_text("Echo: Sent while the cell runs")).to_be_visible()


def test_a_reload_keeps_the_panel_of_a_saved_notebook_and_w_brings_it_back_otherwise(
    open_notebook: Any,
) -> None:
    notebook = open_notebook("w")
    notebook.start_panel()
    exchange(notebook, "Before an unsaved reload", 1)
    driver = notebook.lab.session_driver(notebook.session)
    notebook.page.reload()
    notebook.wait_for_kernel("Idle")
    expect(notebook.cells).to_have_count(2)
    # Unsaved: no output is on disk, so there is nothing to show the widget in.
    expect(notebook.page.locator(".chatbridge-panel")).to_have_count(0)
    notebook.run_cell(1)  # `w` again: the same live widget, on the same connection
    expect(notebook.panel.get_by_text("Echo: Before an unsaved reload")).to_be_visible()
    exchange(notebook, "After w again", 2)
    assert notebook.lab.session_driver(notebook.session) == driver
    notebook.shot("unsaved-reload-w-again")

    # Saved: the reload shows the same panel, on the same connection, still driving.
    notebook.save()
    notebook.page.reload()
    notebook.wait_for_kernel("Idle")
    expect(notebook.page.locator(".chatbridge-panel")).to_have_count(1)
    expect(notebook.panel.get_by_text("Echo: After w again")).to_be_visible()
    expect(notebook.panel.get_by_text("connected", exact=True)).to_be_visible()
    expect(notebook.panel.locator(".chatbridge-delivery")).to_have_text(["✓ delivered"] * 2)
    exchange(notebook, "After the saved reload", 3)
    assert notebook.lab.session_driver(notebook.session) == driver
    notebook.shot("saved-reload")


def test_show_in_sidebar_puts_a_working_panel_in_the_right_hand_area(open_notebook: Any) -> None:
    notebook = open_notebook("sidebar = w.show_in_sidebar()")
    notebook.start_panel()
    notebook.run_cell(1)
    page = notebook.page
    in_sidebar = page.locator("#jp-right-stack .jupyterlab-sidecar .chatbridge-panel")
    expect(in_sidebar).to_be_visible()
    tab = page.locator(".jp-SideBar.jp-mod-right .lm-TabBar-tab.lm-mod-current")
    expect(tab).to_contain_text(f"Chat: {notebook.session}")
    # The same widget: what the sidebar sends, the notebook's panel shows too.
    exchange(notebook, "From the sidebar: 3 lines", 1, in_sidebar)
    in_notebook = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .chatbridge-panel")
    expect(in_notebook.get_by_text("Echo: From the sidebar: 3 lines")).to_be_visible()
    assert_rows_have_natural_height(measure(in_sidebar))
    assert in_sidebar.evaluate(OVERFLOWS) == {"list": 0, "panel": False}
    notebook.shot("sidebar")
