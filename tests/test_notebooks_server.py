"""The example notebooks in kernels of a real `jupyter server`, started with every default.

This is how users run them: `jupyter server` (or `jupyter lab`) in a folder, a
kernel started by it, the cells executed over the kernel's WebSocket. The server
keeps its own default store (per folder, in the data dir), and the kernels find
it through what the extension exported. The same key outputs as
tests/test_notebooks.py (which uses nbclient's own kernel and an in-process
server).
"""

from __future__ import annotations

import html
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from tornado.httpclient import AsyncHTTPClient

from . import notebook_openai
from .kernel_channels import CellRun, RemoteKernel
from .notebook_openai import FakeOpenAIProcess
from .server_process import ServerProcess
from .test_notebooks import RECALLED

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    root = tmp_path / "work"
    root.mkdir()
    process = ServerProcess(root)
    yield process
    process.stop()


@pytest.fixture
def fake_model_server(tmp_path: Path) -> Iterator[FakeOpenAIProcess]:
    """The fake OpenAI-compatible server in its own process, as a local model server."""
    process = FakeOpenAIProcess(tmp_path / "fake_openai.log")
    yield process
    process.stop()


async def run_notebook(server: ServerProcess, name: str) -> tuple[list[CellRun], RemoteKernel]:
    """Every cell of `name` (copied into the server's folder), in order, in one new kernel."""
    shutil.copy(NOTEBOOKS / name, server.root / name)
    nb = nbformat.read(server.root / name, as_version=4)
    kernel = RemoteKernel(server.url, server.token)
    runs: list[CellRun] = []
    try:
        await kernel.start(path=name)
        for cell in nb.cells:
            if cell.cell_type != "code":
                runs.append(CellRun())
                continue
            run = await kernel.execute(cell.source)
            assert not run.errors, "\n".join(run.errors[0].get("traceback", []))
            runs.append(run)
    finally:
        await kernel.shutdown()
    return runs, kernel


async def describe(server: ServerProcess, session_id: str) -> tuple[int, Any]:
    response = await AsyncHTTPClient().fetch(
        f"{server.url}chatbridge/api/sessions/{session_id}",
        headers={"Authorization": f"token {server.token}"},
        raise_error=False,
    )
    return response.code, json.loads(response.body) if response.body else None


@pytest.mark.timeout(180)
async def test_getting_started_in_a_kernel_of_a_real_server(server: ServerProcess) -> None:
    await server.start()
    runs, kernel = await run_notebook(server, "01_getting_started.ipynb")
    model_id = next(
        o["data"]["application/vnd.jupyter.widget-view+json"]["model_id"]
        for o in runs[1].outputs
        if o["output_type"] in {"display_data", "execute_result"}
    )
    busy, summary, scratch = (runs[i].text for i in (4, 6, 8))
    assert "answered while the cell was busy: True" in busy
    assert "  user: Hello from a busy cell  delivered" in summary
    assert " agent: Echo: Hello from a busy cell" in summary
    assert "status: connected | banner: None" in summary
    assert f"connection id: cid-{model_id[:8]}-" in summary
    assert "scratch: closed" in scratch
    cid = next(line.split(": ")[1] for line in summary.splitlines() if "connection id" in line)
    # The kernel is shut down: the widget's connection is inactive, still the driver.
    status, described = await describe(server, "demo")
    assert status == 200 and described["driver"] == f"{cid}:demo"  # the clientId
    states = kernel.widget_states
    assert states[model_id]["_model_name"] == "VBoxModel"
    rendered = [s.get("value", "") for s in states.values() if s.get("_model_name") == "HTMLModel"]
    assert any(html.escape("Echo: Hello from a busy cell") in value for value in rendered)
    assert any("✓ delivered" in value for value in rendered)


@pytest.mark.timeout(180)
async def test_python_client_in_a_kernel_of_a_real_server(server: ServerProcess) -> None:
    await server.start()
    runs, _ = await run_notebook(server, "02_python_client.ipynb")
    ask, stream, history, _, async_ask = (runs[i].text for i in (1, 3, 5, 7, 9))
    assert ask.strip() == "Echo: What does a client keep across reconnects?"
    assert "accepted as seq 12" in stream
    assert "Echo: |stream |this |answer |word |by |word|" in stream
    assert "  you: stream this answer word by word" in history
    assert "agent: Echo: stream this answer word by word" in history
    assert "'client-demo'" in history
    assert async_ask.strip() == "Echo: hello from asyncio"
    assert (await describe(server, "client-demo"))[0] == 404  # the notebook deleted it


@pytest.mark.timeout(180)
async def test_custom_agent_in_a_kernel_of_a_real_server(server: ServerProcess) -> None:
    """Its demo server runs beside the user's server, in the same folder: both must work."""
    await server.start()
    runs, _ = await run_notebook(server, "03_custom_agent.ipynb")
    tried, recalled, asked, panel, stopped = (runs[i].text for i in (3, 5, 9, 11, 13))
    assert tried.strip() == "[1] HELLO AGENT"
    assert recalled.strip() == RECALLED
    assert asked.splitlines() == ["[1] HELLO CUSTOM AGENT", "[2] AND AGAIN"]
    assert panel.strip() == "[3] THE PANEL STREAMS IT TOO"
    assert "server stopped with" in stopped
    assert (server.root / "shout_agent.py").exists()
    # The user's own server kept its store and still serves.
    assert (await describe(server, "shout"))[0] == 404


@pytest.mark.timeout(120)
async def test_custom_agent_says_why_when_its_demo_server_never_comes_up(
    server: ServerProcess,
) -> None:
    """A demo server that exits at once: the wait fails at once, with that server's output."""
    await server.start()
    nb = nbformat.read(NOTEBOOKS / "03_custom_agent.ipynb", as_version=4)
    code = [cell.source for cell in nb.cells if cell.cell_type == "code"]
    start, wait = code[3], code[4]
    assert '"--ShoutAgent.delay=0.01",' in start
    broken = start.replace('"--ShoutAgent.delay=0.01",', '"--no-such-option",')
    kernel = RemoteKernel(server.url, server.token)
    try:
        await kernel.start()
        assert not (await kernel.execute(code[0].replace("shout_agent.py", "/dev/null"))).errors
        assert not (await kernel.execute(broken)).errors
        errors = (await kernel.execute(wait, timeout=60)).errors
    finally:
        await kernel.shutdown()
    assert errors, "the wait passed although the demo server never came up"
    assert errors[0]["ename"] == "RuntimeError"
    said = errors[0]["evalue"]
    assert "the demo server never came up (exited with" in said
    assert "no-such-option" in said  # the demo server's own complaint


@pytest.mark.timeout(180)
async def test_openai_agent_in_a_kernel_of_a_real_server(
    tmp_path: Path, fake_model_server: FakeOpenAIProcess
) -> None:
    """Started as the notebook says, with its agent's model server in another process."""
    await fake_model_server.start()
    root = tmp_path / "work"
    root.mkdir()
    server = ServerProcess(root, *notebook_openai.server_args(fake_model_server.base_url))
    try:
        await server.start()
        runs, _ = await run_notebook(server, notebook_openai.NAME)
        texts = {i: run.text for i, run in enumerate(runs)}
        requests = await fake_model_server.requests()
        notebook_openai.check_outputs(texts, requests, fake_model_server.base_url)
        for session_id in ("local-model", "local-model-terse", "local-model-typo"):
            assert (await describe(server, session_id))[0] == 404  # the notebook deleted them
    finally:
        server.stop()
