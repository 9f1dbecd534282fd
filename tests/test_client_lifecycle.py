"""A blocking `ChatClient` that is dropped, or made again each time a cell re-runs,
cleans up after itself: its thread, loop, resolver threads and event stream go with it."""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest

from jupyter_chatbridge.client import ChatClient
from jupyter_chatbridge.server.bridge import ChatBridge

from .support import eventually

T = TypeVar("T")


@pytest.fixture
def script() -> Iterator[Callable[[Callable[[], T]], Any]]:
    """Runs blocking client code off the server's loop, on one thread made up front
    (so that the threads counted before and after are the same ones)."""
    with ThreadPoolExecutor(1, thread_name_prefix="script") as pool:
        pool.submit(lambda: None).result()

        async def run(function: Callable[[], T]) -> T:
            return await asyncio.get_running_loop().run_in_executor(pool, function)

        yield run


def _client_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "chatbridge-client"]


def _active(bridge: ChatBridge, cids: list[str]) -> list[str]:
    return [cid for cid in cids if bridge.connections.get(cid).active]


async def test_dropped_clients_leave_no_thread_and_no_stream(
    server_url: str, token: str, bridge: ChatBridge, script: Any
) -> None:
    before = threading.active_count()

    def three_clients() -> list[str]:
        cids = []
        for _ in range(3):
            client = ChatClient(server_url, token).connect()
            client.session("demo").ask("hi")  # a session handle and a finished answer
            cids.append(client.cid)
        return cids  # the clients are dropped here, never closed

    gc.disable()  # no reference cycle may be what keeps (or frees) them
    try:
        cids = await script(three_clients)
        assert len(set(cids)) == 3
        await eventually(lambda: not _client_threads())
    finally:
        gc.enable()
    await eventually(lambda: not _active(bridge, cids))
    await eventually(lambda: threading.active_count() == before)


async def test_a_cell_run_again_leaves_one_client(
    server_url: str, token: str, bridge: ChatBridge, script: Any
) -> None:
    before = threading.active_count()
    cell: dict[str, Any] = {}  # a notebook's namespace
    cids: list[str] = []

    def run_cell() -> None:
        cell["client"] = ChatClient(server_url, token).connect()
        cell["demo"] = cell["client"].session("demo")
        cids.append(cell["client"].cid)

    for _ in range(5):
        await script(run_cell)
    gc.collect()
    await eventually(lambda: len(_client_threads()) == 1)
    await eventually(lambda: _active(bridge, cids) == [cids[-1]])
    assert await script(lambda: cell["demo"].ask("still there?")) == "Echo: still there?"
    await script(cell["client"].close)
    assert not _client_threads()
    assert not _active(bridge, cids)
    await eventually(lambda: threading.active_count() == before)


async def test_close_from_a_callback_on_its_own_loop_does_not_hang(
    server_url: str, token: str, script: Any
) -> None:
    def close_on_loop() -> bool:
        client = ChatClient(server_url, token).connect()
        done = threading.Event()
        client.call_soon(lambda: (client.close(), done.set()))
        return done.wait(10)

    assert await script(close_on_loop)
    await eventually(lambda: not _client_threads())
