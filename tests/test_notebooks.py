"""The example notebooks, executed headless in real kernels against a real server.

Each notebook runs in a fresh ipykernel started by nbclient, from the test's
environment, in which the extension has exported where its server is: so the
notebooks find the in-process server exactly as they find a user's JupyterLab.
nbclient's async API runs on the test's loop, so that server keeps serving.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient
from traitlets.config import Config

from jupyter_chatbridge.client.discovery import ENV_TOKEN, ENV_URL

from . import notebook_openai
from .fake_openai import FakeOpenAI

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


@pytest.fixture
def jp_server_config(jp_server_config: Config, request: pytest.FixtureRequest) -> Config:
    """A test that uses the fake OpenAI server gets a server whose agent is `OpenAIAgent`
    pointed at it, configured as notebook 04 tells its reader to."""
    if "fake_openai" in request.fixturenames:
        fake: FakeOpenAI = request.getfixturevalue("fake_openai")
        fake.pace = notebook_openai.PACE
        jp_server_config.merge(Config(notebook_openai.server_config(fake.base_url)))
    return jp_server_config


@pytest.fixture
def kernel_env(
    jp_serverapp: Any, http_server: Any, jp_asyncio_loop: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a real server does once bound: export its URL and token for its kernels."""
    # Let monkeypatch restore whatever the extension changes in os.environ.
    for name in (ENV_URL, ENV_TOKEN):
        monkeypatch.setenv(name, os.environ.get(name, ""))
    jp_asyncio_loop.run_until_complete(jp_serverapp.extension_manager.start_all_extensions())
    assert os.environ[ENV_URL] == jp_serverapp.connection_url


async def run_notebook(name: str, workdir: Path) -> Any:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(
        nb,
        timeout=60,
        kernel_name="python3",
        resources={"metadata": {"path": str(workdir)}},
    )
    await client.async_execute()
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            assert output["output_type"] != "error", "\n".join(output.get("traceback", []))
    return nb


def text_of(cell: Any) -> str:
    return "".join(
        output.get("text", "") for output in cell.outputs if output["output_type"] == "stream"
    )


def widget_states(nb: Any) -> dict[str, dict[str, Any]]:
    """The widget models as the front end would hold them at the end of the run."""
    states = nb.metadata["widgets"][WIDGET_STATE]["state"]
    return {model_id: model["state"] for model_id, model in states.items()}


@pytest.mark.timeout(120)
async def test_getting_started(kernel_env: None, tmp_path: Path, bridge: Any) -> None:
    nb = await run_notebook("01_getting_started.ipynb", tmp_path)
    display = nb.cells[1].outputs[0]["data"][WIDGET_VIEW]
    model_id = display["model_id"]
    busy, summary, scratch = (text_of(nb.cells[i]) for i in (4, 6, 8))
    assert "answered while the cell was busy: True" in busy
    assert "  user: Hello from a busy cell  delivered" in summary
    assert " agent: Echo: Hello from a busy cell" in summary
    assert "status: connected | banner: None" in summary
    assert f"connection id: cid-{model_id[:8]}-" in summary
    assert "scratch: closed" in scratch
    # The server saw the widget's comm id as its connection id, and it drives the session.
    cid = next(line.split(": ")[1] for line in summary.splitlines() if "connection id" in line)
    assert bridge.connections.get(cid).stable
    assert bridge.sessions.get("demo").driver == cid
    # What the front end received from the widget's thread while the cell was busy.
    states = widget_states(nb)
    assert states[model_id]["_model_name"] == "VBoxModel"
    rendered = [s.get("value", "") for s in states.values() if s.get("_model_name") == "HTMLModel"]
    assert any(html.escape("Echo: Hello from a busy cell") in value for value in rendered)
    assert any("✓ delivered" in value for value in rendered)


@pytest.mark.timeout(120)
async def test_python_client(kernel_env: None, tmp_path: Path, bridge: Any) -> None:
    nb = await run_notebook("02_python_client.ipynb", tmp_path)
    ask, stream, history, _, async_ask = (text_of(nb.cells[i]) for i in (1, 3, 5, 7, 9))
    assert ask.strip() == "Echo: What does a client keep across reconnects?"
    assert "accepted as seq 12" in stream  # after the 11 events of the first exchange
    assert "Echo: |stream |this |answer |word |by |word|" in stream
    assert "  you: stream this answer word by word" in history
    assert "agent: Echo: stream this answer word by word" in history
    assert "'client-demo'" in history
    assert async_ask.strip() == "Echo: hello from asyncio"
    assert bridge.sessions.get("client-demo") is None  # the notebook deleted it


# What notebook 03's agent that reads the conversation says of its example history.
RECALLED = "Before this you asked 1 thing(s); last: 'what is a seq?' (stopped)."


@pytest.mark.timeout(120)
async def test_custom_agent(kernel_env: None, tmp_path: Path) -> None:
    nb = await run_notebook("03_custom_agent.ipynb", tmp_path)
    tried, recalled, asked, panel, stopped = (text_of(nb.cells[i]) for i in (3, 5, 9, 11, 13))
    assert tried.strip() == "[1] HELLO AGENT"
    assert recalled.strip() == RECALLED
    assert asked.splitlines() == ["[1] HELLO CUSTOM AGENT", "[2] AND AGAIN"]
    assert panel.strip() == "[3] THE PANEL STREAMS IT TOO"
    assert "server stopped with" in stopped
    assert (tmp_path / "shout_agent.py").exists()
    json.dumps(nb.metadata.get("widgets", {}))  # the widget state is plain JSON


@pytest.mark.timeout(180)
async def test_openai_agent(kernel_env: None, tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    nb = await run_notebook(notebook_openai.NAME, tmp_path)
    texts = {i: text_of(cell) for i, cell in enumerate(nb.cells) if cell.cell_type == "code"}
    requests = [r.summary() for r in fake_openai.chat_requests]
    notebook_openai.check_outputs(texts, requests, fake_openai.base_url)
