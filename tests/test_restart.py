"""A real server process killed and started again under a connected client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jupyter_chatbridge.client import AsyncChatClient, ConnectionStatus, StatusChange
from jupyter_chatbridge.clock import FakeScheduler

from .server_process import ServerProcess
from .support import eventually


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path)
    yield process
    process.kill()


async def test_clients_see_the_new_epoch_and_recover_what_the_server_knows(
    server: ServerProcess, jp_asyncio_loop: Any
) -> None:
    await server.start()
    clock = FakeScheduler()
    statuses: list[StatusChange] = []
    welcomes: list[dict] = []
    client = AsyncChatClient(
        server.url,
        server.token,
        scheduler=clock,
        on_status=statuses.append,
        on_frame=lambda kind, data: welcomes.append(data) if kind == "welcome" else None,
    )
    try:
        session = await client.session("s1")
        assert await session.ask("before") == "Echo: before"
        server.kill()
        await eventually(lambda: client.stream.status is ConnectionStatus.RECONNECTING)
        await server.start()
        clock.advance(statuses[-1].retry_in)  # the client's backoff runs out
        await eventually(lambda: client.stream.status is ConnectionStatus.CONNECTED)
        assert welcomes[-1]["epoch"] != welcomes[0]["epoch"]
        assert welcomes[-1]["resumed"] is False
        # Sessions lived in the old process's memory: the client says so instead of waiting.
        await eventually(lambda: session.lost is not None)
        assert session.lost == "session_unknown"
        # The same client goes on working against the new server.
        again = await client.session("s1")
        assert await again.ask("after") == "Echo: after"
        assert client.stream.connection_id == client.cid
    finally:
        await client.close()
