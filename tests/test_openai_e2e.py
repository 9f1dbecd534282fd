"""`OpenAIAgent` selected by configuration in a real server, against the fake provider."""

from __future__ import annotations

import logging
import sys
from typing import Any

import pytest
from traitlets.config import Config

from jupyter_chatbridge.client import AsyncChatClient, HTTPStatusError

from .fake_openai import FakeOpenAI, stall, stall_after
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


async def _watch(api: Api, streams: StreamFactory, sid: str) -> Any:
    cid = new_cid()
    stream = await streams.open(cid)
    await api.ok("POST", "watch", body={"sessionId": sid}, headers={"X-Connection-ID": cid})
    return stream


def _ended(stream: Any, message_id: str) -> bool:
    return any(
        e["type"] == "message_end" and e["messageId"] == message_id
        for e in stream.session_events(None)
    )


def _ends(stream: Any) -> int:
    return sum(e["type"] == "message_end" for e in stream.session_events(None))


async def test_stop_closes_the_upstream_stream_and_the_next_message_is_answered(
    api: Api, streams: StreamFactory, fake_openai: FakeOpenAI
) -> None:
    await api.ok("POST", "sessions", body={"sessionId": "s1"})
    stream = await _watch(api, streams, "s1")
    fake_openai.script(stall_after(1, "Partial ", "never sent"))  # then the default echo
    await api.ok("POST", "send", body={"sessionId": "s1", "clientMsgId": "c1", "text": "long"})
    queued = await api.ok(
        "POST", "send", body={"sessionId": "s1", "clientMsgId": "c2", "text": "next"}
    )
    # Its answer's id is m<its seq>: 3 if the first answer started before it arrived.
    next_answer = f"m{queued['seq']}"
    await stream.wait_for(
        lambda s: any(e.get("text") == "Partial " for e in s.session_events(None))
    )
    upstream = fake_openai.chat_requests[0]
    assert not upstream.disconnected

    stopped = await api.ok("POST", "sessions", "s1", "stop", body={"messageId": "m1"})
    assert (stopped["stopped"], stopped["reason"]) == ("m1", "stopped")
    await upstream.wait_disconnected()  # the fake saw its client go away
    assert not upstream.finished
    await stream.wait_for(lambda s: _ended(s, next_answer))
    events = stream.session_events(None)
    ends = {e["messageId"]: e["reason"] for e in events if e["type"] == "message_end"}
    assert ends == {"m1": "stopped", next_answer: "complete"}  # m<seq of the message answered>
    texts = [e["text"] for e in events if e.get("messageId") == next_answer and "text" in e]
    assert "".join(texts) == "You said: next"
    # The stopped answer is in the next request's context, partial and marked as stopped.
    second = fake_openai.chat_requests[1].body["messages"]
    assert [m["role"] for m in second] == ["user", "assistant", "user"]
    assert second[0]["content"] == "long" and second[2]["content"] == "next"
    assert second[1]["content"].startswith("Partial ") and "stopped" in second[1]["content"]


async def test_a_stop_before_the_first_token_closes_the_pending_request(
    api: Api, streams: StreamFactory, fake_openai: FakeOpenAI
) -> None:
    await api.ok("POST", "sessions", body={"sessionId": "s1"})
    stream = await _watch(api, streams, "s1")
    fake_openai.script(stall())
    await api.ok("POST", "send", body={"sessionId": "s1", "clientMsgId": "c1", "text": "hi"})
    upstream = await fake_openai.wait_for_requests(1)
    stopped = await api.ok("POST", "sessions", "s1", "stop")
    assert (stopped["stopped"], stopped["reason"]) == ("m1", "stopped")
    await upstream.wait_disconnected()
    await stream.wait_for(lambda s: _ended(s, "m1"))
    answer = [e for e in stream.session_events(None) if e.get("messageId") == "m1"]
    assert [(e["type"], e.get("reason")) for e in answer] == [
        ("message_start", None),
        ("message_end", "stopped"),
    ]


async def test_the_second_request_carries_the_first_exchange(
    api: Api, streams: StreamFactory, fake_openai: FakeOpenAI
) -> None:
    await api.ok("POST", "sessions", body={"sessionId": "s1"})
    stream = await _watch(api, streams, "s1")
    for cmid, text in (("c1", "first question"), ("c2", "second question")):
        await api.ok("POST", "send", body={"sessionId": "s1", "clientMsgId": cmid, "text": text})
    await stream.wait_for(lambda s: _ends(s) == 2)
    assert fake_openai.chat_requests[1].body["messages"] == [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "You said: first question"},
        {"role": "user", "content": "second question"},
    ]


@pytest.mark.chatbridge(max_context_chars=30)
async def test_the_context_is_bounded_by_max_context_chars(
    api: Api, streams: StreamFactory, fake_openai: FakeOpenAI
) -> None:
    await api.ok("POST", "sessions", body={"sessionId": "s1"})
    stream = await _watch(api, streams, "s1")
    texts = ("a long first question", "q2", "q3")
    for number, text in enumerate(texts, 1):
        await api.ok(
            "POST", "send", body={"sessionId": "s1", "clientMsgId": f"c{number}", "text": text}
        )
    await stream.wait_for(lambda s: _ends(s) == 3)
    # 30 characters: "q2" and "You said: q2" fit, the first exchange (21 + 31) does not.
    assert fake_openai.chat_requests[2].body["messages"] == [
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "You said: q2"},
        {"role": "user", "content": "q3"},
    ]


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [({"temperature": "hot"}, "temperature"), ({"model": 5}, "model")],
)
async def test_settings_the_agent_refuses_are_400_and_create_nothing(
    api: Api, settings: dict[str, Any], fragment: str
) -> None:
    status, body = await api("POST", "sessions", body={"sessionId": "s1", "settings": settings})
    assert status == 400 and body["code"] == "bad_request" and fragment in body["error"]
    assert (await api("GET", "sessions", "s1"))[0] == 404
    assert (await api.ok("GET", "sessions"))["sessions"] == []


async def test_the_python_client_creates_a_session_with_settings_or_says_why_not(
    server_url: str, token: str, fake_openai: FakeOpenAI
) -> None:
    async with AsyncChatClient(server_url, token) as client:
        with pytest.raises(HTTPStatusError) as refused:
            await client.session("hot", settings={"temperature": 3})
        assert (refused.value.status, refused.value.code) == (400, "bad_request")
        assert "settings.temperature must be a number from 0 to 2" in refused.value.body["error"]
        assert [s["sessionId"] for s in await client.list_sessions()] == []
        session = await client.session("s1", settings={"model": "llama3.2", "temperature": 0.5})
        assert (await client.get_session("s1"))["settings"] == {
            "model": "llama3.2",
            "temperature": 0.5,
        }
        assert await session.ask("hello") == "You said: hello"
    body = fake_openai.chat_requests[0].body
    assert (body["model"], body["temperature"]) == ("llama3.2", 0.5)
