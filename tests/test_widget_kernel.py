"""`ChatWidget` in a real kernel: its widgets (comms) are made and closed only on the
kernel's main thread, while the answer still streams into the panel during a busy cell.

The kernel's shell handlers iterate its comm table with no lock (`comm_info_request`),
so a comm registered from another thread can break them. The notebook records the thread
of every `CommManager.register_comm` / `unregister_comm` call.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from .agents import GateAgent
from .test_notebooks import kernel_env  # noqa: F401  (the kernel finds this server)

RECORD = """
import json, threading
from comm.base_comm import CommManager
calls = []
def recorded(name):
    original = getattr(CommManager, name)
    def wrapper(self, comm):
        calls.append((name, threading.current_thread().name))
        return original(self, comm)
    setattr(CommManager, name, wrapper)
recorded("register_comm")
recorded("unregister_comm")
def panel_text(widget):
    '''Every HTML value drawn in the panel's message list, nested boxes included.'''
    values, todo = [], [widget._panel.messages]
    while todo:
        item = todo.pop()
        values.append(str(getattr(item, "value", "")))
        todo.extend(getattr(item, "children", ()))
    return " ".join(values)
"""
OPEN = """
from jupyter_chatbridge import ChatWidget
w = ChatWidget("kernel-threads")
display(w)
assert w.wait_until_idle(30)
"""
# The cell keeps the kernel's main thread busy until the answer is in the panel (or 30 s).
BUSY = """
import time
w.send_message("streams while busy")
deadline = time.monotonic() + 30
while "Echo: streams while busy" not in panel_text(w) and time.monotonic() < deadline:
    time.sleep(0.01)
print(json.dumps({"streamed": "Echo: streams while busy" in panel_text(w)}))
"""
CLOSE = """
assert w.wait_until_idle(30)
rows = len(w._panel.rows)
w.close()
print(json.dumps({"calls": calls, "rows": rows, "closed": w.comm is None}))
"""


def _notebook(tmp_path: Path, *codes: str) -> tuple[Any, NotebookClient]:
    """A notebook of these code cells and the client that runs them in a real kernel."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(code) for code in codes]
    client = NotebookClient(
        nb, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    return nb, client


def _assert_no_errors(nb: Any) -> None:
    for cell in nb.cells:
        for output in cell.outputs:
            assert output["output_type"] != "error", "\n".join(output.get("traceback", []))


def _printed(cell: Any) -> dict[str, Any]:
    text = "".join(o.get("text", "") for o in cell.outputs if o["output_type"] == "stream")
    return dict(json.loads(text.strip().splitlines()[-1]))


@pytest.mark.timeout(120)
async def test_widgets_are_made_and_closed_on_the_kernel_thread_while_answers_stream(
    kernel_env: None,  # noqa: F811
    tmp_path: Path,
) -> None:
    nb, client = _notebook(tmp_path, *(RECORD, OPEN, BUSY, CLOSE))
    await client.async_execute()
    _assert_no_errors(nb)
    assert _printed(nb.cells[2]) == {"streamed": True}  # drawn while the cell was busy
    result = _printed(nb.cells[3])
    assert result["closed"] and result["rows"] == 2  # the rows were made after the cell
    calls = result["calls"]
    assert {name for name, _ in calls} == {"register_comm", "unregister_comm"}
    assert {thread for _, thread in calls} == {"MainThread"}, calls


RERUN = """
import threading
from jupyter_chatbridge import ChatWidget
def widget_threads():
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("chatbridge-widget"))
comms_before = len(get_ipython().kernel.comm_manager.comms)
for _ in range(3):  # the same cell, run three times
    w = ChatWidget("rerun")
    display(w)
    assert w.wait_until_idle(30)
print(json.dumps({"threads": widget_threads()}))
"""
# Closed from another thread while the kernel's thread is busy: the comms wait for it.
CLOSE_ELSEWHERE = """
closer = threading.Thread(target=w.close)
closer.start()
closer.join(30)
print(json.dumps({"threads": widget_threads(), "open_until_the_cell_ends": w.comm is not None}))
"""
AFTER = """
print(json.dumps({
    "closed": w.comm is None,
    "comms_left": len(get_ipython().kernel.comm_manager.comms) - comms_before,
    "off_main": [c for c in calls if c[1] != "MainThread"],
}))
"""


@pytest.mark.timeout(120)
async def test_a_cell_run_again_leaves_one_panel_and_close_leaves_nothing(
    kernel_env: None,  # noqa: F811
    tmp_path: Path,
) -> None:
    nb, client = _notebook(tmp_path, *(RECORD, RERUN, CLOSE_ELSEWHERE, AFTER))
    await client.async_execute()
    _assert_no_errors(nb)
    assert _printed(nb.cells[1]) == {"threads": ["chatbridge-widget-rerun"]}
    assert _printed(nb.cells[2]) == {"threads": [], "open_until_the_cell_ends": True}
    assert _printed(nb.cells[3]) == {"closed": True, "comms_left": 0, "off_main": []}


STOP_OPEN = """
import json, time
from jupyter_chatbridge import ChatWidget
w = ChatWidget("kernel-stop")
display(w)
assert w.wait_until_idle(30)
def wait_for(condition):
    deadline = time.monotonic() + 30
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()
def answers():
    return [
        {key: m[key] for key in ("text", "done", "ended")}
        for m in w.summary()["messages"] if m["role"] == "agent"
    ]
def answer_rows():
    '''Each answer's drawn HTML, once the kernel's thread has made its row.'''
    rows = w._panel.rows
    entries = w._on_loop(lambda: w.view.entries)
    return [rows[e.key].html.value for e in entries if e.role == "agent" and e.key in rows]
"""
# Two messages; the first answer is mid-stream (its agent waits at the test's gate) when
# Stop is clicked, twice, as a user might.
STOP_CLICK = """
w.send_message("first question")
w.send_message("second question")
stop = w._panel.stop_button
assert wait_for(lambda: stop.layout.display == "" and answers()[:1] == [
    {"text": "working ", "done": False, "ended": None}])
stop.click()
stop.click()
assert wait_for(lambda: len(answers()) == 2 and answers()[0]["done"])
# Rows wait for the kernel's thread, which this cell keeps busy: until then, the panel draws
# them into its waiting-rows widget.
assert wait_for(lambda: "■ stopped" in w._panel.waiting_rows.value)
shown = wait_for(lambda: stop.layout.display == "" and not stop.disabled)  # for the next one
print(json.dumps({"answers": answers(), "stop_shown": shown}))
"""
# The test opened the gate: the queued message's answer completes.
STOP_AFTER = """
assert w.wait_until_idle(30)
shown = stop.layout.display == ""
print(json.dumps({"answers": answers(), "rows": answer_rows(), "stop_shown": shown}))
w.close()
"""


@pytest.mark.timeout(120)
@pytest.mark.chatbridge(agent_class=GateAgent)
async def test_stop_in_a_real_kernel_keeps_the_partial_answer_and_the_next_is_answered(
    kernel_env: None,  # noqa: F811
    tmp_path: Path,
) -> None:
    GateAgent.gate, GateAgent.runs = asyncio.Event(), []
    nb, client = _notebook(tmp_path, *(STOP_OPEN, STOP_CLICK, STOP_AFTER))
    try:
        async with client.async_setup_kernel():
            for index, cell in enumerate(nb.cells):
                if index == 2:
                    GateAgent.gate.set()
                await client.async_execute_cell(cell, index)
    finally:
        GateAgent.gate.set()
    _assert_no_errors(nb)
    stopped, second = _printed(nb.cells[1])["answers"]
    assert stopped == {"text": "working ", "done": True, "ended": "stopped"}
    assert (second["done"], second["ended"]) == (False, None)  # the queued one, streaming
    assert _printed(nb.cells[1])["stop_shown"]  # now for that answer
    after = _printed(nb.cells[2])
    assert [(a["text"], a["ended"]) for a in after["answers"]] == [
        ("working ", "stopped"),
        ("working done", "complete"),
    ]
    assert "■ stopped" in after["rows"][0] and "■ stopped" not in after["rows"][1]
    assert not after["stop_shown"]
    assert GateAgent.runs and len(GateAgent.runs) == 2
