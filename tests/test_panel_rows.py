"""The panel makes its row widgets only on the kernel's thread, and draws what arrives
meanwhile (a cell keeps that thread busy) into its waiting-rows widget.

The "kernel's thread" is a real thread here, held busy by the test as a cell would.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from comm.base_comm import CommManager

from jupyter_chatbridge.client.stream import ConnectionStatus, StatusChange
from jupyter_chatbridge.ui.chatview import ChatView
from jupyter_chatbridge.ui.kernel_thread import KernelThread
from jupyter_chatbridge.ui.panel import ChatPanel

from .test_chatview import SID, Session, accepted, pending


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The thread of every comm registration from now on."""
    threads: list[str] = []
    original = CommManager.register_comm

    def record(self: CommManager, comm: Any) -> str:
        threads.append(threading.current_thread().name)
        return original(self, comm)

    monkeypatch.setattr(CommManager, "register_comm", record)
    return threads


@pytest.fixture
def kernel() -> Iterator[tuple[KernelThread, threading.Event]]:
    """A kernel thread, and the event that ends the "cell" it is busy with."""
    with ThreadPoolExecutor(1, thread_name_prefix="kernel") as pool:
        thread = pool.submit(threading.current_thread).result()
        cell_done = threading.Event()
        pool.submit(cell_done.wait, 10)  # a running cell
        yield KernelThread(pool.submit, thread), cell_done
        cell_done.set()


def test_new_rows_wait_for_the_kernel_thread_and_the_answer_streams_meanwhile(
    kernel: tuple[KernelThread, threading.Event], registered: list[str]
) -> None:
    kernel_thread, cell_done = kernel
    made = threading.Event()
    panel = ChatPanel(
        height="360px",
        max_messages=100,
        on_text=lambda _: True,
        on_retry=lambda _: None,
        on_banner_action=lambda: None,
        on_status_action=lambda: None,
        kernel=kernel_thread,
        on_rows_made=made.set,
    )
    view = ChatView(SID)
    view.status_changed(StatusChange(ConnectionStatus.CONNECTED))
    session = Session(view)
    registered.clear()

    # While the cell runs: a message and its answer, streaming.
    view.outbox_event(pending("c1", "question"))
    seq = session.user("c1", "question")
    view.outbox_event(accepted("c1", seq, "question"))
    session.answer(seq, "the answer so far")
    panel.draw(view, view.take_changes())
    assert registered == [] and panel.rows == {} and panel.rows_pending
    assert panel.waiting_rows in panel.messages.children
    shown = panel.waiting_rows.value
    assert "question" in shown and "the answer so far" in shown and "✓ delivered" in shown
    assert shown.index("the answer so far") < shown.index("question")  # newest first

    # The cell ends: the kernel's thread makes the rows, the next draw puts them in place.
    cell_done.set()
    assert made.wait(10)
    panel.draw(view, view.take_changes())
    assert registered and set(registered) == {"kernel_0"}
    assert not panel.rows_pending
    assert len(panel.rows) == 2
    assert panel.waiting_rows not in panel.messages.children
    texts = [row.html.value for row in panel.rows.values()]
    assert any("the answer so far" in text for text in texts)
    assert panel.messages.children[1] is next(iter(reversed(panel.rows.values()))).container
