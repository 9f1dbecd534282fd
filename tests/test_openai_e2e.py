"""`OpenAIAgent` selected by configuration in a real server, against the fake provider."""

from __future__ import annotations

import logging
import sys
from typing import Any

import pytest
from traitlets.config import Config

from .fake_openai import FakeOpenAI
from .support import Api, StreamFactory, new_cid

KEY = "sk-e2e-0f9e8d7c6b5a4938SECRET"


@pytest.fixture
def jp_server_config(
    jp_server_config: Config, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> Config:
    # The key comes from the environment, as the README advises: jupyter_server logs
    # its whole configuration at debug level, so a key put in the config would be logged.
    monkeypatch.setenv("CHATBRIDGE_TEST_KEY", KEY)
    fake_openai.api_key = KEY
    jp_server_config.ChatBridgeApp.agent_class = "jupyter_chatbridge.OpenAIAgent"
    jp_server_config.OpenAIAgent.base_url = fake_openai.base_url
    jp_server_config.OpenAIAgent.model = "gpt-fake"
    jp_server_config.OpenAIAgent.api_key_env = "CHATBRIDGE_TEST_KEY"
    return jp_server_config


async def _answer(api: Api, streams: StreamFactory, sid: str, text: str) -> list[dict[str, Any]]:
    cid = new_cid()
    stream = await streams.open(cid)
    await api.ok("POST", "watch", body={"sessionId": sid}, headers={"X-Connection-ID": cid})
    await api.ok("POST", "send", body={"sessionId": sid, "clientMsgId": "m1", "text": text})
    await stream.wait_for(lambda s: any(e["type"] == "message_end" for e in s.session_events(None)))
    return stream.session_events(None)


async def test_configured_by_name_it_streams_the_provider_answer_as_block_deltas(
    api: Api, streams: StreamFactory, fake_openai: FakeOpenAI
) -> None:
    await api.ok("POST", "sessions", body={"sessionId": "s1", "settings": {"model": "llama3.2"}})
    events = await _answer(api, streams, "s1", "hello there")
    assert [e["type"] for e in events] == ["user_message", "message_start"] + [
        "block_delta"
    ] * 3 + ["message_end"]
    assert "".join(e["text"] for e in events if e["type"] == "block_delta") == (
        "You said: hello there"
    )
    assert fake_openai.chat_requests[0].body["model"] == "llama3.2"  # the session's setting


async def test_a_provider_failure_is_an_error_event_without_the_key(
    api: Api, streams: StreamFactory, fake_openai: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    """The whole server log at debug level, start-up included, and every event."""
    caplog.set_level(logging.DEBUG)
    fake_openai.api_key = "sk-the-provider-wants-another-one"
    await api.ok("POST", "sessions", body={"sessionId": "s1"})
    events = await _answer(api, streams, "s1", "hi")
    errors = [e for e in events if e["type"] == "error"]
    assert len(errors) == 1
    assert "refused the API key (401): check the API key" in errors[0]["message"]
    history = await api.ok("GET", "sessions", "s1", "events")
    server_log = "\n".join(
        r.getMessage() for phase in ("setup", "call") for r in caplog.get_records(phase)
    )
    assert "Config changed" in server_log and "chatbridge: agent failed" in server_log
    for text in (server_log, str(history), str(events)):
        assert KEY not in text and KEY[-8:] not in text


async def test_without_the_openai_package_the_answer_is_one_error_naming_the_extra(
    api: Api, streams: StreamFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "openai", None)  # `import openai` now fails
    await api.ok("POST", "sessions", body={"sessionId": "s1"})
    events = await _answer(api, streams, "s1", "hi")
    assert [e["type"] for e in events] == ["user_message", "message_start", "error", "message_end"]
    assert events[2]["message"].endswith(
        'OpenAIAgent needs the optional openai package: pip install "jupyter_chatbridge[openai]"'
    )
