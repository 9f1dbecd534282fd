"""`OpenAIAgent`: streamed answers from any OpenAI-compatible chat-completions server.

OpenAI itself, and by `base_url` Ollama, vLLM, the llama.cpp server or LM Studio::

    c.ChatBridgeApp.agent_class = "jupyter_chatbridge.OpenAIAgent"
    c.OpenAIAgent.base_url = "http://127.0.0.1:11434/v1"   # e.g. Ollama
    c.OpenAIAgent.model = "llama3.2"

It needs the optional `openai` package (`pip install "jupyter_chatbridge[openai]"`);
this module imports without it, and making an agent says how to install it.

Retries are this agent's, not the SDK's (it is made with `max_retries=0`): they
happen only before the first token (after it, a retry would repeat text), they
wait on the injected scheduler (tests advance a fake clock instead of sleeping),
they honour `Retry-After` up to `max_retry_wait` and never retry an exhausted
quota, and each one is logged, so a slow answer says why.
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from traitlets import Any as AnyTrait
from traitlets import Bool, Float, Int, Unicode, default

from ..clock import LoopScheduler, sleep
from .agents import Agent, Ending, Role, Turn, UserMessage
from .context import trim_turns

if TYPE_CHECKING:
    from openai import AsyncOpenAI, AsyncStream
    from openai.types.chat import ChatCompletionChunk

    from .openai_failures import Target

INSTALL_HINT = 'pip install "jupyter_chatbridge[openai]"'
OPENAI_URL = "https://api.openai.com/v1"
# The SDK refuses to start without a key; local servers ignore whatever is sent.
NO_KEY = "no-key-set"
MAX_MODEL_NAME = 256
# What an answer that did not complete is marked with when it is sent back as history.
_ENDING_NOTES = {
    Ending.STOPPED: "[stopped by the user]",
    Ending.ERROR: "[this answer failed]",
    Ending.INTERRUPTED: "[cut short by a server restart]",
}

_T = TypeVar("_T")


class MissingExtraError(ImportError):
    """The `openai` extra is not installed."""


class FirstTokenTimeout(Exception):
    """No text arrived within the first-token time-out."""


@dataclass(frozen=True)
class Overrides:
    """What a session's settings change: None keeps the configured value."""

    model: str | None = None
    system_prompt: str | None = None
    temperature: float | None = None


def settings_overrides(settings: dict[str, Any]) -> Overrides:
    """Read `model`, `system_prompt` and `temperature` from a session's settings.

    Raises ValueError with a message for the user on a bad value; other keys
    are not this agent's and are ignored; a null value means "not overridden".
    """
    model = settings.get("model")
    if model is not None and (
        not isinstance(model, str)
        or not model.strip()
        or len(model) > MAX_MODEL_NAME
        or not model.isprintable()
    ):
        raise ValueError(
            f"settings.model must be a model name (1 to {MAX_MODEL_NAME} printable characters)"
        )
    system_prompt = settings.get("system_prompt")
    if system_prompt is not None and not isinstance(system_prompt, str):
        raise ValueError("settings.system_prompt must be a string")
    temperature = settings.get("temperature")
    if temperature is not None and (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not math.isfinite(temperature)
        or not 0 <= temperature <= 2
    ):
        raise ValueError("settings.temperature must be a number from 0 to 2")
    return Overrides(
        model.strip() if model is not None else None,
        system_prompt,
        float(temperature) if temperature is not None else None,
    )


def chat_messages(system_prompt: str, history: Sequence[Turn], text: str) -> list[dict[str, str]]:
    """The `messages` of a request: system prompt, the history, then the new message.

    Roles alternate, starting with the user (strict chat templates of local
    servers reject anything else): leading answers are dropped and consecutive
    turns of one role are joined. An answer that did not complete says so.
    """
    messages: list[dict[str, str]] = []
    for turn in [*history, Turn(Role.USER, text)]:
        content = turn.text
        note = _ENDING_NOTES.get(turn.ended or "")
        if note:
            content = f"{content}\n\n{note}" if content else note
        if not messages and turn.role != Role.USER:
            continue
        if messages and messages[-1]["role"] == turn.role:
            messages[-1]["content"] += "\n\n" + content
        else:
            messages.append({"role": turn.role, "content": content})
    if system_prompt:
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def _require_openai() -> None:
    try:
        import openai  # noqa: F401
    except ImportError:
        raise MissingExtraError(
            f"OpenAIAgent needs the optional openai package: {INSTALL_HINT}"
        ) from None


class OpenAIAgent(Agent):
    """Answers through an OpenAI-compatible `POST {base_url}/chat/completions`, streamed.

    Each request carries the system prompt, the conversation so far (trimmed to
    `context_turns` and `context_chars`) and the new message. A session's
    `settings` may set `model`, `system_prompt` and `temperature`.
    """

    base_url = Unicode(
        help="The server's API root, e.g. http://127.0.0.1:11434/v1 for Ollama. "
        f"Default: $OPENAI_BASE_URL, else {OPENAI_URL}."
    ).tag(config=True)
    model = Unicode("gpt-4o-mini", help="The model to ask (a session may override it).").tag(
        config=True
    )
    api_key = Unicode(
        help="The API key; default $OPENAI_API_KEY. Local servers need none. "
        "It is sent only as the Authorization header: never logged, never in an event."
    ).tag(config=True)
    system_prompt = Unicode("", help="Sent first in every request; empty sends none.").tag(
        config=True
    )
    temperature = Float(
        None, allow_none=True, help="Sampling temperature (0-2); None: the server's default."
    ).tag(config=True)
    max_tokens = Int(
        None, allow_none=True, help="Longest answer in tokens; None: the server's default."
    ).tag(config=True)
    context_turns = Int(
        40, help="Earlier turns sent with each message (a message or an answer is one turn)."
    ).tag(config=True)
    context_chars = Int(
        24000, help="Characters of earlier turns sent with each message; the oldest go first."
    ).tag(config=True)
    timeout = Float(
        60.0, help="Seconds an attempt waits for the first token before the answer fails."
    ).tag(config=True)
    stall_timeout = Float(
        120.0, help="Seconds without any data from the server before the answer fails."
    ).tag(config=True)
    max_retries = Int(
        2, help="Retries of a rate limit, 5xx or connection failure before the first token."
    ).tag(config=True)
    max_retry_wait = Float(
        30.0, help="Longest Retry-After honoured; a server asking for longer is reported."
    ).tag(config=True)
    include_usage = Bool(
        True, help="Ask for token usage (stream_options.include_usage), logged at debug level."
    ).tag(config=True)
    scheduler = AnyTrait(help="The clock retries and time-outs wait on (tests inject a fake).")

    @default("base_url")
    def _default_base_url(self) -> str:
        return os.environ.get("OPENAI_BASE_URL") or OPENAI_URL

    @default("api_key")
    def _default_api_key(self) -> str:
        return os.environ.get("OPENAI_API_KEY", "")

    @default("scheduler")
    def _default_scheduler(self) -> LoopScheduler:
        return LoopScheduler()

    def __init__(self, **kwargs: Any) -> None:
        _require_openai()
        super().__init__(**kwargs)
        self._client: AsyncOpenAI | None = None

    @classmethod
    def validate_settings(cls, settings: dict[str, Any]) -> dict[str, Any]:
        """Check `model`, `system_prompt` and `temperature`; raises ValueError (a 400)."""
        settings_overrides(settings)
        return settings

    async def reply(self, message: UserMessage) -> AsyncIterator[str]:
        from .openai_failures import ProviderError, cut_short, describe

        params, target = self._request(message)
        stream, read = await self._start(params, target)
        try:
            while True:
                for chunk in read:
                    if chunk.usage is not None:
                        self.log.debug("chatbridge: %s usage: %s", target.model, chunk.usage)
                    if not chunk.choices:
                        continue
                    choice = chunk.choices[0]
                    if choice.delta.content:
                        yield choice.delta.content
                    problem = cut_short(choice.finish_reason, target)
                    if problem:
                        raise ProviderError(problem)
                try:
                    read = [await stream.__anext__()]
                except StopAsyncIteration:
                    return
                except Exception as exc:
                    raise ProviderError(describe(exc, target, midway=True)) from None
        finally:
            # Closing the generator (Stop, session deleted) must free the upstream request.
            await stream.close()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    # -- internals ------------------------------------------------------------------

    def _request(self, message: UserMessage) -> tuple[dict[str, Any], Target]:
        from .openai_failures import Target

        overrides = settings_overrides(self.settings)
        model = overrides.model or self.model
        system_prompt = (
            overrides.system_prompt if overrides.system_prompt is not None else self.system_prompt
        )
        temperature = (
            overrides.temperature if overrides.temperature is not None else self.temperature
        )
        history = trim_turns(message.history, self.context_chars, self.context_turns)
        params: dict[str, Any] = {
            "model": model,
            "messages": chat_messages(system_prompt, history, message.text),
            "stream": True,
        }
        if self.include_usage:
            params["stream_options"] = {"include_usage": True}
        if temperature is not None:
            params["temperature"] = temperature
        if self.max_tokens is not None:
            params["max_tokens"] = self.max_tokens
        target = Target(
            self.base_url, model, self.api_key, self.timeout, self.stall_timeout, self.max_tokens
        )
        return params, target

    def _openai(self) -> AsyncOpenAI:
        if self._client is None:
            from openai import AsyncOpenAI

            self._client = AsyncOpenAI(
                api_key=self.api_key or NO_KEY,
                base_url=self.base_url,
                max_retries=0,
                timeout=self.stall_timeout,
            )
        return self._client

    async def _start(
        self, params: dict[str, Any], target: Target
    ) -> tuple[AsyncStream[ChatCompletionChunk], list[ChatCompletionChunk]]:
        """Open the stream and read up to its first text, retrying what may be retried."""
        from .openai_failures import ProviderError, describe, retry_delay, scrub

        attempt = 0
        while True:
            try:
                return await self._within(self.timeout, self._first_text(params))
            except FirstTokenTimeout:
                raise ProviderError(
                    scrub(
                        f"no answer from {target.base_url} within {self.timeout:g}s "
                        f"(model {target.model!r}): the server may be busy or still loading "
                        "the model; c.OpenAIAgent.timeout sets how long to wait",
                        target.api_key,
                    )
                ) from None
            except Exception as exc:
                delay = retry_delay(exc, attempt, self.max_retries, self.max_retry_wait)
                if delay is None:
                    raise ProviderError(describe(exc, target, retries=attempt)) from None
                attempt += 1
                self.log.warning(
                    "chatbridge: %s; retry %d of %d in %.3gs",
                    describe(exc, target),
                    attempt,
                    self.max_retries,
                    delay,
                )
                await sleep(self.scheduler, delay)

    async def _first_text(
        self, params: dict[str, Any]
    ) -> tuple[AsyncStream[ChatCompletionChunk], list[ChatCompletionChunk]]:
        """The open stream and its chunks up to the first with text or an ending."""
        stream = await self._openai().chat.completions.create(**params)
        read: list[ChatCompletionChunk] = []
        try:
            while True:
                try:
                    chunk = await stream.__anext__()
                except StopAsyncIteration:
                    return stream, read
                read.append(chunk)
                if any(c.delta.content or c.finish_reason for c in chunk.choices):
                    return stream, read
        except BaseException:
            await stream.close()
            raise

    async def _within(self, seconds: float, work: Awaitable[_T]) -> _T:
        """`work`'s result, or FirstTokenTimeout after `seconds` of the scheduler's time."""
        task = asyncio.ensure_future(work)
        timer = self.scheduler.call_later(seconds, task.cancel)
        try:
            await asyncio.wait([task])
        except asyncio.CancelledError:
            # Stopped while waiting: end the request before letting the cancellation through.
            task.cancel()
            await asyncio.wait([task])
            raise
        finally:
            timer.cancel()
        if task.cancelled():
            raise FirstTokenTimeout
        return task.result()
