"""Fixtures: a real in-process Jupyter server with the extension, on a fake clock."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from traitlets.config import Config

from jupyter_chatbridge.clock import FakeScheduler
from jupyter_chatbridge.server.bridge import ChatBridge
from jupyter_chatbridge.server.store import SessionStore
from jupyter_chatbridge.testing.seam import install_fault_seam

from .agents import GateAgent
from .fake_openai import FakeOpenAI
from .redis_support import RedisServer
from .server_process import ServerProcess
from .store_support import StoreFactory, store_factory
from .support import Api, StreamFactory

pytest_plugins = ["pytest_jupyter.jupyter_server"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "chatbridge(**traits): ChatBridgeApp config for this test's server"
    )


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeScheduler:
    """The server's clock: TTLs and heartbeats move only when the test advances it."""
    fake = FakeScheduler()
    monkeypatch.setattr("jupyter_chatbridge.server.app.LoopScheduler", lambda: fake)
    return fake


@pytest.fixture
def jp_server_config(
    clock: FakeScheduler, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Config:
    # Scripted send faults (settings["chatbridge_faults"]) for the client tests.
    install_fault_seam(monkeypatch)
    traits: dict[str, Any] = {"inactive_ttl": 60.0, "heartbeat_interval": 15.0}
    traits["store_path"] = ":memory:"  # durable-store tests: test_store.py, test_restart.py
    marker = request.node.get_closest_marker("chatbridge")
    if marker is not None:
        traits.update(marker.kwargs)
    agent = traits.pop("agent", {})
    return Config(
        {
            "ServerApp": {"jpserver_extensions": {"jupyter_chatbridge": True}},
            "ChatBridgeApp": traits,
            # Answers stream without delay; tests wait for events, never for time.
            "EchoAgent": {"chunk_delay": 0.0, **agent},
        }
    )


@pytest.fixture
def bridge(jp_serverapp: Any) -> ChatBridge:
    """The running server's bridge, to check server-side state directly."""
    return jp_serverapp.web_app.settings["chatbridge"]  # type: ignore[no-any-return]


@pytest.fixture
def server_url(jp_serverapp: Any, http_server: Any, jp_http_port: int, jp_base_url: str) -> str:
    """The running server's URL, base_url included, as a client is given it."""
    return f"http://127.0.0.1:{jp_http_port}{jp_base_url}"


@pytest.fixture
def token(jp_serverapp: Any) -> str:
    """The running server's token."""
    return str(jp_serverapp.identity_provider.token)


@pytest.fixture
def api(jp_fetch: Any) -> Api:
    """REST calls that return (status, json) instead of raising on 4xx."""
    return Api(jp_fetch)


@pytest.fixture
def streams(
    jp_serverapp: Any,
    http_server: Any,  # binds the port
    jp_http_port: int,
    jp_base_url: str,
    jp_asyncio_loop: Any,
) -> Iterator[StreamFactory]:
    """Open raw SSE streams against the server; all are closed at the end."""
    factory = StreamFactory(jp_http_port, jp_base_url, jp_serverapp.identity_provider.token)
    yield factory
    jp_asyncio_loop.run_until_complete(factory.close_all())


@pytest.fixture
def fake_openai(jp_asyncio_loop: Any) -> Iterator[FakeOpenAI]:
    """A fake OpenAI-compatible server on the test's event loop (tests/fake_openai.py)."""
    fake = FakeOpenAI()
    fake.listen()
    yield fake
    jp_asyncio_loop.run_until_complete(fake.stop())


@pytest.fixture(scope="session")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server for the whole run (tests/redis_support.py), stopped by pid."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(shared_redis: RedisServer) -> str:
    """The URL of an empty Redis (the shared server, flushed for this test)."""
    shared_redis.flushall()
    return shared_redis.url


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, which it may kill and start again."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["memory", "sqlite", "redis"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Makes the store under test (the shared contract: every kind); SQLite ones share
    one file, so each must be closed before the next is made."""
    url = request.getfixturevalue("redis_url") if request.param == "redis" else ""
    yield from store_factory(request.param, tmp_path, url)


@pytest.fixture
def store(make_store: StoreFactory) -> SessionStore:
    return make_store()


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Real `jupyter server` processes (every default, their own folder each), all
    killed at the end of the test."""
    servers: list[ServerProcess] = []

    def make(*args: str) -> ServerProcess:
        root = tmp_path / f"server{len(servers)}"
        root.mkdir()
        server = ServerProcess(root, *args)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.kill()


@pytest.fixture
def gate() -> Iterator[asyncio.Event]:
    """Holds every `GateAgent` answer until the test sets it (set again at the end)."""
    GateAgent.gate = asyncio.Event()
    GateAgent.runs = []
    yield GateAgent.gate
    GateAgent.gate.set()
