"""What `OpenAIAgent` makes of a provider failure: retry it, or tell the user what to do.

Every text here is scrubbed of the API key: providers echo keys (OpenAI masks
all but a few characters; some proxies echo them whole), and the text reaches
the server log and the session's `error` event. Imported only once the `openai`
package is known to be installed.
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass

import openai

# The first wait when the server gives no Retry-After; doubled on every retry (as the SDK does).
INITIAL_RETRY_DELAY = 0.5
# A provider message is quoted up to this many characters.
MAX_QUOTED = 300

_MASKED_KEY = re.compile(r"\S*\*{4,}\S*")
_TRANSIENT_STATUS = frozenset({408, 409, 429})


class ProviderError(RuntimeError):
    """A model provider failure, worded for the user; never contains the API key."""


@dataclass(frozen=True)
class Target:
    """What a request was for, to name it in messages."""

    base_url: str
    model: str
    api_key: str
    timeout: float
    stall_timeout: float
    max_tokens: int | None


def scrub(text: str, secret: str) -> str:
    """`text` without `secret` and without a masked key as providers echo one."""
    if secret:
        text = text.replace(secret, "[api key]")
    return _MASKED_KEY.sub("[api key]", text)


def retry_after(headers: Mapping[str, str]) -> float | None:
    """The seconds a response asks the client to wait: `retry-after-ms`, `retry-after`
    in seconds or as an HTTP date; None when absent or unreadable."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            if name != "retry-after":
                continue
            try:
                seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
            except (TypeError, ValueError):
                continue
        if math.isfinite(seconds):
            return max(0.0, seconds)
    return None


def retry_delay(exc: Exception, attempt: int, max_retries: int, max_wait: float) -> float | None:
    """Seconds to wait before retrying a failure before the first token, or None: report it.

    Rate limits, 408/409, 5xx and connection failures are retried, honouring
    `Retry-After` (up to `max_wait`; a longer wait is reported at once); time-outs,
    an exhausted quota and every other error are not.
    """
    if attempt >= max_retries or isinstance(exc, openai.APITimeoutError):
        return None
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        if status not in _TRANSIENT_STATUS and status < 500:
            return None
        if exc.code == "insufficient_quota":
            return None
        asked = retry_after(exc.response.headers)
        if asked is not None:
            return asked if asked <= max_wait else None
    elif not isinstance(exc, openai.APIConnectionError):
        return None
    return min(INITIAL_RETRY_DELAY * 2.0**attempt, max_wait)


def describe(exc: Exception, target: Target, *, retries: int = 0, midway: bool = False) -> str:
    """A message the user can act on for a failure of the SDK (`openai.OpenAIError`),
    without the API key; `midway` when text had already streamed."""
    return scrub(_describe(exc, target, retries, midway), target.api_key)


def cut_short(finish_reason: str | None, target: Target) -> str | None:
    """Why an answer that ended with `finish_reason` is incomplete, or None if it is whole."""
    if finish_reason == "length":
        limit = f"max_tokens={target.max_tokens}" if target.max_tokens else "the model's limit"
        return f"the answer was cut short at the token limit ({limit})"
    if finish_reason == "content_filter":
        return f"{target.base_url}'s content filter stopped the answer"
    return None


def _describe(exc: Exception, target: Target, retries: int, midway: bool) -> str:
    url = target.base_url
    after = f" after {retries} {'retry' if retries == 1 else 'retries'}" if retries else ""
    if isinstance(exc, openai.APITimeoutError):
        if midway:
            return f"the answer stalled: nothing from {url} for {target.stall_timeout:g}s"
        return f"timed out waiting for {url}: is the server up and reachable?"
    if isinstance(exc, openai.APIConnectionError):
        cause = _cause(exc)
        if midway:
            return f"the connection to {url} was lost mid-answer{cause}"
        return f"the connection to {url} failed{after}{cause}: is the server running at base_url?"
    if isinstance(exc, openai.APIStatusError):
        return _status_message(exc, target, after)
    if isinstance(exc, openai.APIError):
        where = " mid-answer" if midway else ""
        return f"{url} reported an error{where}: {_quoted(exc)}"
    return f"the request to {url} failed: {type(exc).__name__}: {exc}"


def _status_message(exc: openai.APIStatusError, target: Target, after: str) -> str:
    url, model, status, code = target.base_url, target.model, exc.status_code, exc.code
    said = _quoted(exc)
    if status == 401:
        if not target.api_key:
            return (
                f"{url} needs an API key (401) and none is set: "
                "set OPENAI_API_KEY or c.OpenAIAgent.api_key"
            )
        return (
            f"{url} refused the API key (401): check the API key "
            "(c.OpenAIAgent.api_key, by default $OPENAI_API_KEY)"
        )
    if status == 403:
        return f"{url} denied access to model {model!r} (403): check the key's permissions. {said}"
    if status == 404:
        if code == "model_not_found" or model in said:
            return (
                f"model {model!r} not found at {url} (404): check the model name "
                f"(GET {url.rstrip('/')}/models lists what it serves)"
            )
        return (
            f"{url.rstrip('/')}/chat/completions does not exist (404): check base_url "
            "(OpenAI-compatible servers usually serve under /v1)"
        )
    if status == 400 and code == "context_length_exceeded":
        return (
            f"the conversation is too long for model {model!r} (400): lower "
            f"c.OpenAIAgent.context_chars or context_turns. {said}"
        )
    if status == 429:
        if code == "insufficient_quota":
            return f"the quota at {url} is used up (429): check your plan and billing. {said}"
        asked = retry_after(exc.response.headers)
        wait = f"; it asks to wait {asked:g}s" if asked else ""
        return f"rate limited by {url} (429){after}{wait}: try again later"
    if status >= 500:
        return f"{url} failed with {status}{after}: try again later. {said}"
    return f"{url} rejected the request ({status}): {said}"


def _quoted(exc: openai.APIError) -> str:
    body = exc.body
    message = body.get("message") if isinstance(body, dict) else None
    if not isinstance(message, str) or not message:
        message = body if isinstance(body, str) and body else exc.message
    message = " ".join(message.split())
    return message if len(message) <= MAX_QUOTED else message[: MAX_QUOTED - 1] + "…"


def _cause(exc: Exception) -> str:
    cause = exc.__cause__
    text = str(cause).strip() if cause is not None else ""
    return f" ({text})" if text else ""
