"""Which store a real `jupyter server` uses, and what a second server on it gets.

- With every default, the store is per server: two servers of one user (one data
  dir) started in two folders each keep their own sessions, and a server started
  again in a folder finds that folder's sessions.
- A store held by another live server: chatbridge still loads and every endpoint
  answers `503 busy` naming the file and the other server's pid, never a silent 404.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient

from .server_process import ServerProcess


@pytest.fixture
def servers() -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for server in started:
        server.kill()


async def call(server: ServerProcess, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    response = await AsyncHTTPClient().fetch(
        f"{server.url}chatbridge/api/{path}",
        method=method,
        body=None if body is None else json.dumps(body),
        headers={"Authorization": f"token {server.token}"},
        raise_error=False,
    )
    text = response.body.decode() if response.body else ""
    is_json = "json" in response.headers.get("Content-Type", "")
    return response.code, (json.loads(text) if is_json and text else text)


async def session_ids(server: ServerProcess) -> list[str]:
    status, body = await call(server, "GET", "sessions")
    assert status == 200, body
    return [s["sessionId"] for s in body["sessions"]]


async def test_two_servers_in_two_folders_with_every_default_keep_their_own_sessions(
    tmp_path: Path, servers: list[ServerProcess]
) -> None:
    data = tmp_path / "data"  # one user: one Jupyter data dir
    folders = [tmp_path / "project-a", tmp_path / "project-b"]
    for folder in folders:
        folder.mkdir()
    a, b = (ServerProcess(folder, data_dir=data) for folder in folders)
    servers.extend([a, b])
    await asyncio.gather(a.start(), b.start())  # both load chatbridge (200 on sessions)
    assert (await call(a, "POST", "sessions", {"sessionId": "only-a"}))[0] == 201
    assert (await call(b, "POST", "sessions", {"sessionId": "only-b"}))[0] == 201
    assert await session_ids(a) == ["only-a"]
    assert await session_ids(b) == ["only-b"]
    stores = sorted(data.glob("chatbridge/servers/*/sessions.sqlite3"))
    assert [p.parent.name.rsplit("-", 1)[0] for p in stores] == ["project-a", "project-b"]
    # Started again in its folder, a server finds that folder's sessions.
    a.kill()
    again = ServerProcess(folders[0], data_dir=data)
    servers.append(again)
    await again.start()
    assert await session_ids(again) == ["only-a"]
    # Both starts in that folder (one log file) used its one store.
    log = again.log.read_text()
    assert f"sessions are kept in {stores[0]} (0 restored)" in log
    assert f"sessions are kept in {stores[0]} (1 restored)" in log


async def test_a_store_held_by_another_live_server_answers_503_naming_file_and_pid(
    tmp_path: Path, servers: list[ServerProcess]
) -> None:
    store = tmp_path / "shared" / "sessions.sqlite3"
    roots = [tmp_path / "first", tmp_path / "second"]
    for root in roots:
        root.mkdir()
    first = ServerProcess(roots[0], f"--ChatBridgeApp.store_path={store}")
    servers.append(first)
    await first.start()
    assert (await call(first, "POST", "sessions", {"sessionId": "s1"}))[0] == 201
    second = ServerProcess(roots[1], f"--ChatBridgeApp.store_path={store}")
    servers.append(second)
    await second.start(ready="api/status")  # Jupyter comes up, and so does chatbridge
    assert first.process is not None
    expected = f"{store} is in use by another running server (pid {first.process.pid})"
    requests: list[tuple[str, str, Any]] = [
        ("GET", "sessions", None),
        ("POST", "sessions", {"sessionId": "s2"}),
        ("GET", "sessions/s1", None),
        ("GET", "sessions/s1/events", None),
        ("POST", "send", {"sessionId": "s1", "clientMsgId": "m1", "text": "hi"}),
        ("GET", "events?cid=cid-00000000-0000-4000-8000-000000000000", None),
    ]
    for method, path, body in requests:
        status, answer = await call(second, method, path, body)
        assert status == 503, (method, path, answer)
        assert answer["code"] == "busy" and expected in answer["error"], answer
    assert expected in second.log.read_text()
    # The first server is untouched and still the store's only writer.
    assert await session_ids(first) == ["s1"]
