"""Notebook 04 (`OpenAIAgent`) against the fake OpenAI-compatible server: what both notebook
runs check (tests/test_notebooks.py in-process, tests/test_notebooks_server.py with a real
server), and the fake in its own process for the real server's run."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

from tornado.httpclient import AsyncHTTPClient

from .server_process import free_port

NAME = "04_openai_agent.ipynb"
REPO = Path(__file__).resolve().parents[1]
MODEL = "llama3.2"  # one of the fake's models, as a user's config would name theirs
# Seconds between the fake model's chunks: the long answer is still streaming when the
# notebook stops it after three pieces, with seconds to spare on a loaded machine.
PACE = 0.1

# The questions the notebook asks, as the fake echoes them back ("You said: ...").
FIRST = "Pick a prime number between 10 and 20. Answer with the number only."
FOLLOW_UP = "Now double the number you picked."
TERSE = "Why is the sky blue?"
STORY = (
    "Tell me a long story about a lighthouse keeper who counts the ships that pass, "
    "one by one, through a whole winter of storms, fog and clear cold nights."
)
QUEUED = "In one sentence: what is a lighthouse for?"


def server_config(base_url: str) -> dict[str, dict[str, str]]:
    """The notebook's config snippet (`c.ChatBridgeApp.agent_class = ...`), as a dict."""
    return {
        "ChatBridgeApp": {"agent_class": "jupyter_chatbridge.OpenAIAgent"},
        "OpenAIAgent": {"base_url": base_url, "model": MODEL},
    }


def server_args(base_url: str) -> list[str]:
    """The same, as command-line options of `jupyter server`."""
    return [
        f"--{section}.{trait}={value}"
        for section, traits in server_config(base_url).items()
        for trait, value in traits.items()
    ]


def check_outputs(texts: dict[int, str], requests: list[dict[str, Any]], base_url: str) -> None:
    """What a reader of notebook 04 relies on, from its cells' printed text (by cell
    index) and the chat requests the fake server received (`/_fake/requests`)."""
    assert texts[2].strip() == f"You said: {FIRST}"
    assert texts[4].strip() == f"You said: {FOLLOW_UP}"
    assert texts[6].strip() == f"You said: {TERSE}"
    assert texts[8].splitlines() == [
        "400 bad_request - settings.temperature must be a number from 0 to 2",
        "False",  # and no session was made
    ]
    stop, ended, kept = texts[10].splitlines()
    assert (stop, ended) == ("stop: stopped", "ended: stopped")
    full_story = f"You said: {STORY}"
    partial = kept.removeprefix("kept: ")
    # The partial text is kept: what streamed before the Stop, and not the whole answer.
    assert partial.startswith("You said: Tell me") and full_story.startswith(partial)
    assert len(partial) < len(full_story) / 2
    assert texts[12].splitlines() == [f"You said: {QUEUED}", "ended: complete"]
    raised, error, end = texts[14].splitlines()
    refusal = (
        f"agent failed: model 'no-such-model' not found at {base_url} (404): check the model "
        f"name (GET {base_url}/models lists what it serves)"
    )
    assert raised == f"ask() raised: {refusal}"
    assert (error, end) == (f"error - {refusal}", "message_end - error")

    bodies = [r["body"] for r in requests]
    assert [b["model"] for b in bodies] == [MODEL] * 5 + ["no-such-model"]
    # The follow-up went with the first exchange: the conversation is the context.
    assert bodies[1]["messages"] == [
        {"role": "user", "content": FIRST},
        {"role": "assistant", "content": f"You said: {FIRST}"},
        {"role": "user", "content": FOLLOW_UP},
    ]
    # The session's settings, and only that session's.
    assert bodies[2]["messages"][0] == {
        "role": "system",
        "content": "Answer in at most five words.",
    }
    assert bodies[2]["temperature"] == 0.2 and "temperature" not in bodies[1]
    # Stop closed the request to the model server; the queued question's request tells
    # the model what the stopped answer had said, and that it was stopped.
    assert requests[3]["disconnected_at"] is not None and not requests[3]["finished"]
    assert bodies[4]["messages"][-3:] == [
        {"role": "user", "content": STORY},
        {"role": "assistant", "content": f"{partial}\n\n[stopped by the user]"},
        {"role": "user", "content": QUEUED},
    ]


class FakeOpenAIProcess:
    """`python -m tests.fake_openai` in its own process, the model server beside a real
    Jupyter server; driven and read over HTTP like any other process would."""

    def __init__(self, log: Path, pace: float = PACE) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.pace = pace
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[Any] | None = None

    async def start(self, timeout: float = 30) -> None:
        """Start it and wait until it answers (a process starting, not a timer under test)."""
        self._log_file = self.log.open("ab")
        command = [sys.executable, "-m", "tests.fake_openai", "--port", str(self.port)]
        self.process = subprocess.Popen(
            [*command, "--pace", str(self.pace)],
            cwd=REPO,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the fake OpenAI server exited: {self.log.read_text()}")
            try:
                response = await AsyncHTTPClient().fetch(
                    f"{self.base_url}/models", raise_error=False
                )
                if response.code == 200:
                    return
            except OSError:
                pass  # not listening yet
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"the fake OpenAI server did not start: {self.log.read_text()}")
            await asyncio.sleep(0.1)

    async def requests(self) -> list[dict[str, Any]]:
        """Every chat request it received, as `GET /_fake/requests` reports them."""
        response = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{self.port}/_fake/requests")
        return list(json.loads(response.body)["requests"])

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
