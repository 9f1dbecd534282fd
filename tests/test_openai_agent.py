"""`OpenAIAgent` with the real `openai` SDK against the fake OpenAI-compatible server.

Time-outs and retry waits run on a fake clock the tests advance; only the fake
server's streaming pace is real (a few milliseconds, where streaming needs it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import openai
import pytest

import jupyter_chatbridge
from jupyter_chatbridge.clock import FakeScheduler
from jupyter_chatbridge.protocol import EventType
from jupyter_chatbridge.server.agents import Ending, Role, Turn, UserMessage
from jupyter_chatbridge.server.context import conversation_before
from jupyter_chatbridge.server.openai_agent import INSTALL_HINT, MissingExtraError, OpenAIAgent
from jupyter_chatbridge.server.openai_failures import ProviderError
from jupyter_chatbridge.server.state import EventLog

from .fake_openai import (
    FakeOpenAI,
    answer,
    api_error,
    drop,
    rate_limited,
    server_error,
    stall,
)
from .support import eventually

KEY = "sk-test-4f1c9a7e2b8d6035SECRET"

MakeAgent = Callable[..., OpenAIAgent]


@pytest.fixture
def clock() -> FakeScheduler:
    return FakeScheduler()


@pytest.fixture
def make_agent(
    fake_openai: FakeOpenAI, clock: FakeScheduler, jp_asyncio_loop: Any
) -> Iterator[MakeAgent]:
    """Agents talking to the fake server with the right key, on the fake clock."""
    fake_openai.api_key = KEY
    made: list[OpenAIAgent] = []

    def make(**traits: Any) -> OpenAIAgent:
        options: dict[str, Any] = {
            "base_url": fake_openai.base_url,
            "model": "gpt-fake",
            "api_key": KEY,
            "scheduler": clock,
            "timeout": 5.0,
        }
        options.update(traits)
        agent = OpenAIAgent(session_id="s1", **options)
        made.append(agent)
        return agent

    yield make
    for agent in made:
        jp_asyncio_loop.run_until_complete(agent.close())


def message(text: str, history: tuple[Turn, ...] = (), seq: int = 1) -> UserMessage:
    return UserMessage("s1", seq, f"c{seq}", text, None, history)


async def chunks(agent: OpenAIAgent, msg: UserMessage) -> list[str]:
    return [chunk async for chunk in agent.reply(msg)]


async def retry_wait(clock: FakeScheduler, seconds: float) -> None:
    """Wait until the agent waits `seconds` on the clock: the only timer, as the first-token
    time-out of the failed attempt is cancelled."""
    await eventually(lambda: [round(d, 6) for d in clock.due_in()] == [seconds])


async def failure(agent: OpenAIAgent, msg: UserMessage) -> str:
    with pytest.raises(ProviderError) as raised:
        await chunks(agent, msg)
    return str(raised.value)


# -- streaming and the request ------------------------------------------------------


async def test_each_streamed_delta_is_a_chunk(
    make_agent: MakeAgent, fake_openai: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake_openai.script(answer("Hel", "lo", ", world"))
    assert await chunks(make_agent(), message("hi")) == ["Hel", "lo", ", world"]
    request = fake_openai.chat_requests[0]
    assert request.key_ok is True
    assert request.headers["Authorization"] == "[redacted]"
    assert request.body == {
        "model": "gpt-fake",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    assert request.finished and not request.disconnected
    assert "total_tokens=" in caplog.text  # the usage chunk (empty choices) was read


async def test_the_second_request_contains_the_first_exchange(
    make_agent: MakeAgent, fake_openai: FakeOpenAI
) -> None:
    """The history comes from the session's events, as the bridge logs them."""
    log = EventLog("s1", max_events=100, max_receipts=100)
    agent = make_agent(system_prompt="You are terse.")

    async def turn(text: str) -> str:
        seq = log.append(EventType.USER_MESSAGE, {"clientMsgId": text, "text": text}).seq
        history = conversation_before(log.after(0), seq, max_chars=10_000)
        log.append(EventType.MESSAGE_START, {"messageId": f"m{seq}", "replyTo": seq})
        parts = []
        async for chunk in agent.reply(message(text, history, seq)):
            log.append(EventType.BLOCK_DELTA, {"messageId": f"m{seq}", "text": chunk})
            parts.append(chunk)
        log.append(EventType.MESSAGE_END, {"messageId": f"m{seq}"})
        return "".join(parts)

    first = await turn("my name is Ada")
    assert first == "You said: my name is Ada"
    await turn("what is my name?")
    assert fake_openai.chat_requests[1].body["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "my name is Ada"},
        {"role": "assistant", "content": "You said: my name is Ada"},
        {"role": "user", "content": "what is my name?"},
    ]


async def test_history_is_trimmed_and_answers_that_did_not_complete_say_so(
    make_agent: MakeAgent, fake_openai: FakeOpenAI
) -> None:
    history = (
        Turn(Role.USER, "q1"),
        Turn(Role.ASSISTANT, "a1", Ending.COMPLETE),
        Turn(Role.USER, "q2"),
        Turn(Role.ASSISTANT, "half an ans", Ending.STOPPED),
        Turn(Role.USER, "q3"),
        Turn(Role.ASSISTANT, "", Ending.ERROR),
    )
    await chunks(make_agent(context_turns=5), message("q4", history))
    assert fake_openai.chat_requests[0].body["messages"] == [
        # a1 was the oldest of the 5 turns kept: a history starts with a user message
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "half an ans\n\n[stopped by the user]"},
        {"role": "user", "content": "q3"},
        {"role": "assistant", "content": "[this answer failed]"},
        {"role": "user", "content": "q4"},
    ]
    # 13 characters: "", "q3" and "half an ans" (whose answer then leads, so it goes too)
    await chunks(make_agent(context_chars=13), message("q4", history))
    assert fake_openai.chat_requests[1].body["messages"] == [
        {"role": "user", "content": "q3"},
        {"role": "assistant", "content": "[this answer failed]"},
        {"role": "user", "content": "q4"},
    ]


async def test_session_settings_override_model_system_prompt_and_temperature(
    make_agent: MakeAgent, fake_openai: FakeOpenAI
) -> None:
    configured = make_agent(system_prompt="Configured.", temperature=1.0, max_tokens=50)
    await chunks(configured, message("hi"))
    overridden = make_agent(system_prompt="Configured.", temperature=1.0, max_tokens=50)
    overridden.settings = {"model": "llama3.2", "system_prompt": "Be brief.", "temperature": 0}
    await chunks(overridden, message("hi"))
    first, second = (r.body for r in fake_openai.chat_requests)
    assert (first["model"], first["messages"][0], first["temperature"]) == (
        "gpt-fake",
        {"role": "system", "content": "Configured."},
        1.0,
    )
    assert (second["model"], second["messages"][0], second["temperature"]) == (
        "llama3.2",
        {"role": "system", "content": "Be brief."},
        0.0,
    )
    assert first["max_tokens"] == second["max_tokens"] == 50


@pytest.mark.parametrize(
    ("settings", "complaint"),
    [
        ({"model": ""}, "settings.model"),
        ({"model": 3}, "settings.model"),
        ({"model": "a\nb"}, "settings.model"),
        ({"model": "x" * 300}, "settings.model"),
        ({"system_prompt": ["no"]}, "settings.system_prompt"),
        ({"temperature": "hot"}, "settings.temperature must be a number from 0 to 2"),
        ({"temperature": 2.5}, "settings.temperature"),
        ({"temperature": -1}, "settings.temperature"),
        ({"temperature": True}, "settings.temperature"),
    ],
)
def test_bad_settings_are_refused_with_a_readable_message(
    settings: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(ValueError, match=complaint.replace(".", r"\.")):
        jupyter_chatbridge.OpenAIAgent.validate_settings(settings)


def test_good_settings_are_kept_whole() -> None:
    settings = {"model": "llama3.2:8b", "temperature": 2, "system_prompt": "", "title": "mine"}
    assert OpenAIAgent.validate_settings(settings) == settings


async def test_bad_settings_stored_before_validation_fail_the_answer_clearly(
    make_agent: MakeAgent, fake_openai: FakeOpenAI
) -> None:
    agent = make_agent()
    agent.settings = {"temperature": 9}
    with pytest.raises(ValueError, match="temperature"):
        await chunks(agent, message("hi"))
    assert fake_openai.chat_requests == []


# -- failures reach the user as clear errors -----------------------------------------


async def test_a_wrong_key_says_check_the_api_key_and_never_echoes_it(
    make_agent: MakeAgent, fake_openai: FakeOpenAI
) -> None:
    wrong = "sk-wrong-77c1d0e5a9b34f62TAIL"
    text = await failure(make_agent(api_key=wrong), message("hi"))
    assert "refused the API key (401): check the API key" in text
    assert wrong not in text and wrong[-4:] not in text and "***" not in text
    fake_openai.api_key = "sk-needed-but-unset-0000"
    text = await failure(make_agent(api_key=""), message("hi"))
    assert "none is set: set OPENAI_API_KEY" in text


async def test_an_unknown_model_is_named_with_the_base_url(
    make_agent: MakeAgent, fake_openai: FakeOpenAI
) -> None:
    text = await failure(make_agent(model="gpt-nope"), message("hi"))
    assert text.startswith(f"model 'gpt-nope' not found at {fake_openai.base_url} (404)")
    assert "/models lists what it serves" in text


async def test_a_base_url_without_the_api_path_says_check_base_url(
    make_agent: MakeAgent, fake_openai: FakeOpenAI
) -> None:
    root = fake_openai.base_url.removesuffix("/v1")
    text = await failure(make_agent(base_url=root), message("hi"))
    assert "/chat/completions does not exist (404): check base_url" in text


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (rate_limited(None), "rate limited by {url} (429) after 1 retry: try again later"),
        (server_error(500), "{url} failed with 500 after 1 retry: try again later. The server"),
        (server_error(503), "{url} failed with 503 after 1 retry"),
    ],
)
async def test_rate_limits_and_server_errors_are_retried_then_reported(
    make_agent: MakeAgent, fake_openai: FakeOpenAI, clock: FakeScheduler, reply: Any, expected: str
) -> None:
    fake_openai.script(reply, reply)
    run = asyncio.ensure_future(chunks(make_agent(max_retries=1), message("hi")))
    await retry_wait(clock, 0.5)  # the first backoff step
    clock.advance(0.5)
    with pytest.raises(ProviderError) as raised:
        await run
    assert str(raised.value).startswith(expected.format(url=fake_openai.base_url))
    assert len(fake_openai.chat_requests) == 2


async def test_an_exhausted_quota_is_not_retried(
    make_agent: MakeAgent, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(rate_limited(1, code="insufficient_quota"))
    text = await failure(make_agent(max_retries=3), message("hi"))
    assert "quota" in text and "check your plan and billing" in text
    assert len(fake_openai.chat_requests) == 1


async def test_a_retry_after_longer_than_max_retry_wait_is_reported_at_once(
    make_agent: MakeAgent, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(rate_limited(600))
    text = await failure(make_agent(max_retry_wait=30), message("hi"))
    assert "(429); it asks to wait 600s: try again later" in text
    assert len(fake_openai.chat_requests) == 1


@pytest.mark.parametrize(
    ("first", "wait"),
    [(rate_limited(7), 7.0), (rate_limited(None), 0.5), (server_error(502), 0.5)],
)
async def test_a_failure_before_the_first_token_is_retried_honouring_retry_after(
    make_agent: MakeAgent,
    fake_openai: FakeOpenAI,
    clock: FakeScheduler,
    caplog: pytest.LogCaptureFixture,
    first: Any,
    wait: float,
) -> None:
    fake_openai.script(first, answer("fine", " now"))
    run = asyncio.ensure_future(chunks(make_agent(), message("hi")))
    await retry_wait(clock, wait)
    clock.advance(wait - 0.01)
    assert clock.pending == 1 and len(fake_openai.chat_requests) == 1  # still waiting
    clock.advance(0.01)
    assert await run == ["fine", " now"]
    assert len(fake_openai.chat_requests) == 2
    assert f"retry 1 of 2 in {wait:.3g}s" in caplog.text


async def test_a_server_that_is_not_there_is_a_network_error(make_agent: MakeAgent) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    text = await failure(make_agent(base_url=url, max_retries=0), message("hi"))
    assert text.startswith(f"the connection to {url} failed")
    assert "is the server running at base_url?" in text


async def test_a_connection_dropped_mid_answer_keeps_the_text_and_says_so(
    make_agent: MakeAgent, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(drop(2, "one ", "two ", "three"))
    received: list[str] = []
    with pytest.raises(ProviderError, match="was lost mid-answer") as raised:
        async for chunk in make_agent().reply(message("hi")):
            received.append(chunk)
    assert received == ["one ", "two "]
    assert fake_openai.base_url in str(raised.value)


async def test_a_connection_dropped_before_the_first_token_is_retried(
    make_agent: MakeAgent, fake_openai: FakeOpenAI, clock: FakeScheduler
) -> None:
    fake_openai.script(drop(0))
    run = asyncio.ensure_future(chunks(make_agent(), message("hi")))
    await retry_wait(clock, 0.5)
    clock.advance(0.5)
    assert "".join(await run) == "You said: hi"


@pytest.mark.parametrize("before_headers", [False, True])
async def test_no_first_token_within_the_timeout_fails_and_hangs_up(
    make_agent: MakeAgent, fake_openai: FakeOpenAI, clock: FakeScheduler, before_headers: bool
) -> None:
    fake_openai.script(stall(before_headers=before_headers))
    run = asyncio.ensure_future(chunks(make_agent(timeout=5.0), message("hi")))
    request = await fake_openai.wait_for_requests(1)
    clock.advance(4.9)
    assert not run.done()
    clock.advance(0.1)
    with pytest.raises(ProviderError) as raised:
        await run
    assert str(raised.value).startswith(
        f"no answer from {fake_openai.base_url} within 5s (model 'gpt-fake')"
    )
    await request.wait_disconnected()
    assert len(fake_openai.chat_requests) == 1  # a time-out is not retried


async def test_an_answer_cut_at_the_token_limit_says_so(
    make_agent: MakeAgent, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(answer("a long", " answ", finish_reason="length"))
    received: list[str] = []
    with pytest.raises(ProviderError, match=r"cut short at the token limit \(max_tokens=2\)"):
        async for chunk in make_agent(max_tokens=2).reply(message("hi")):
            received.append(chunk)
    assert received == ["a long", " answ"]


async def test_the_api_key_never_reaches_logs_or_error_texts(
    make_agent: MakeAgent,
    fake_openai: FakeOpenAI,
    clock: FakeScheduler,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)  # the SDK's, httpx's and the agent's own loggers
    agent = make_agent(max_retries=1)
    texts: list[str] = []
    fake_openai.script(
        answer("ok"),
        api_error(400, f"Invalid header 'Bearer {KEY}'"),  # some proxies echo the key whole
        rate_limited(None),
        api_error(400, f"still bad: {KEY}"),
    )
    await chunks(agent, message("hi"))
    texts.append(await failure(agent, message("hi")))
    run = asyncio.ensure_future(chunks(agent, message("hi")))
    await retry_wait(clock, 0.5)
    clock.advance(0.5)
    with pytest.raises(ProviderError) as raised:
        await run
    texts.append(str(raised.value))
    fake_openai.api_key = "sk-another-key-the-agent-lacks"
    texts.append(await failure(agent, message("hi")))  # OpenAI echoes a wrong key masked
    assert texts[0] == f"{fake_openai.base_url} rejected the request (400): " + (
        "Invalid header 'Bearer [api key]'"
    )
    assert "retry 1 of 1" in caplog.text and "HTTP Request: POST" in caplog.text
    recorded = json.dumps([r.summary() for r in fake_openai.requests])
    for haystack in [caplog.text, recorded, *texts]:
        assert KEY not in haystack and KEY[-8:] not in haystack


# -- stopping closes the upstream stream ----------------------------------------------


async def test_closing_the_generator_mid_answer_closes_the_upstream_connection(
    make_agent: MakeAgent, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(answer(*(f"w{i} " for i in range(200)), pace=0.005))
    stream: AsyncIterator[str] = make_agent().reply(message("hi"))
    assert await stream.__anext__() == "w0 "
    await stream.aclose()  # type: ignore[attr-defined]
    request = fake_openai.chat_requests[0]
    await request.wait_disconnected()
    assert request.disconnected and not request.finished


@pytest.mark.parametrize("reply", [stall(), stall(before_headers=True), None])
async def test_cancelling_a_reply_closes_the_upstream_connection(
    make_agent: MakeAgent, fake_openai: FakeOpenAI, reply: Any
) -> None:
    fake_openai.script(reply or answer(*(f"w{i} " for i in range(200)), pace=0.005))
    first_chunk = asyncio.Event()

    async def consume() -> None:
        async for _ in make_agent().reply(message("hi")):
            first_chunk.set()

    run = asyncio.ensure_future(consume())
    request = await fake_openai.wait_for_requests(1)
    if reply is None:
        await asyncio.wait_for(first_chunk.wait(), 10)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    await request.wait_disconnected()
    assert not request.finished


# -- the optional extra and the fake itself -------------------------------------------


def test_without_the_openai_package_making_one_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "openai", None)  # `import openai` now fails
    assert jupyter_chatbridge.OpenAIAgent is OpenAIAgent  # selecting it by name still works
    with pytest.raises(MissingExtraError) as raised:
        OpenAIAgent(session_id="s1")
    assert str(raised.value) == f"OpenAIAgent needs the optional openai package: {INSTALL_HINT}"
    assert INSTALL_HINT == 'pip install "jupyter_chatbridge[openai]"'


async def test_the_fake_serves_models_and_plain_completions_to_the_sdk(
    fake_openai: FakeOpenAI,
) -> None:
    async with openai.AsyncOpenAI(
        api_key="any", base_url=fake_openai.base_url, max_retries=0
    ) as client:
        models = await client.models.list()
        assert [m.id for m in models.data] == fake_openai.models
        completion = await client.chat.completions.create(
            model="gpt-fake", messages=[{"role": "user", "content": "hello you"}]
        )
    assert completion.choices[0].message.content == "You said: hello you"
    assert completion.choices[0].finish_reason == "stop"
