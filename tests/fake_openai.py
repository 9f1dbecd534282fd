"""A faithful fake of an OpenAI-compatible server, for tests and notebooks.

It speaks what the real API speaks to the official `openai` SDK:

- `POST /v1/chat/completions` with `stream: true`: `chat.completion.chunk` SSE
  frames (`data: {...}\\n\\n`), a first chunk with the `role`, content deltas at
  `pace` seconds apart, a chunk with `finish_reason`, a `usage` chunk (empty
  `choices`) when `stream_options.include_usage`, then `data: [DONE]`;
  without `stream`, one `chat.completion` object;
- errors as the API's JSON body `{"error": {"message", "type", "param", "code"}}`
  with its status: 401 `invalid_api_key` (a wrong key, echoed masked as OpenAI
  does), 404 `model_not_found`, 429 with `Retry-After`, 500;
- `GET /v1/models`.

Each request takes the next scripted `Reply` (`FakeOpenAI.script(...)`), or by
default answers "You said: <the last user message>" word by word. A reply can
also drop the connection mid-answer or stall before the first token. Every
request is recorded (`FakeOpenAI.requests`): its headers with the key redacted,
its JSON body, and whether and when its client disconnected.

In a test, use the `fake_openai` fixture (tests/conftest.py). As a process::

    python -m tests.fake_openai --port 8765 [--pace 0.05] [--api-key KEY] [--model NAME]

serves http://127.0.0.1:8765/v1, plus `POST /_fake/script` (a JSON list of
`Reply` fields) and `GET /_fake/requests` so another process can drive it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

from tornado.httpserver import HTTPServer
from tornado.iostream import StreamClosedError
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler


@dataclass
class Reply:
    """How the fake answers one chat-completions request.

    `chunks` None echoes the last user message; `status` other than 200 sends
    `error` (the API's error object) with `headers`; `drop_after` closes the
    connection after that many content chunks; `stall` sends nothing more after
    the role chunk (or, with `stall_before_headers`, nothing at all) until the
    client goes away; `stall_after` does so after that many content chunks; `pace`
    overrides the server's seconds between chunks.
    """

    chunks: list[str] | None = None
    finish_reason: str = "stop"
    status: int = 200
    error: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    drop_after: int | None = None
    stall: bool = False
    stall_before_headers: bool = False
    stall_after: int | None = None
    pace: float | None = None


def answer(*chunks: str, finish_reason: str = "stop", pace: float | None = None) -> Reply:
    """A streamed answer made of exactly these content deltas."""
    return Reply(chunks=list(chunks), finish_reason=finish_reason, pace=pace)


def api_error(
    status: int,
    message: str,
    *,
    type: str = "invalid_request_error",  # the API error object's field name
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    """An error response with the API's JSON body."""
    error = {"message": message, "type": type, "param": None, "code": code}
    return Reply(status=status, error=error, headers=dict(headers or {}))


def rate_limited(retry_after: float | None = 1, *, code: str = "rate_limit_exceeded") -> Reply:
    """A 429 as OpenAI sends it, with `Retry-After` seconds when given."""
    headers = {} if retry_after is None else {"retry-after": f"{retry_after:g}"}
    message = "Rate limit reached for requests. Please try again later."
    if code == "insufficient_quota":
        message = "You exceeded your current quota, please check your plan and billing details."
    return api_error(429, message, type="requests", code=code, headers=headers)


def server_error(status: int = 500) -> Reply:
    """A 5xx with the body OpenAI sends."""
    message = "The server had an error while processing your request. Sorry about that!"
    return api_error(status, message, type="server_error")


def drop(after: int = 0, *chunks: str) -> Reply:
    """Stream `chunks` (default: the echo), closing the connection after `after` of them."""
    return Reply(chunks=list(chunks) or None, drop_after=after)


def stall_after(count: int, *chunks: str) -> Reply:
    """Stream `count` of `chunks`, then send nothing until the client goes away (Stop)."""
    return Reply(chunks=list(chunks), stall_after=count)


def stall(*, before_headers: bool = False) -> Reply:
    """Never send the first token: the client's time-out (or Stop) must end it."""
    return Reply(stall=True, stall_before_headers=before_headers)


@dataclass
class RecordedRequest:
    """What one request contained and what became of it."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    key_ok: bool | None
    received_at: float
    finished: bool = False
    disconnected_at: float | None = None

    def __post_init__(self) -> None:
        self._disconnected = asyncio.Event()

    @property
    def disconnected(self) -> bool:
        """True if the client went away before the response was complete."""
        return self.disconnected_at is not None

    def mark_disconnected(self) -> None:
        if not self.finished and self.disconnected_at is None:
            self.disconnected_at = time.monotonic()
            self._disconnected.set()

    async def wait_disconnected(self, timeout: float = 10.0) -> None:
        """Wait until the client closes the connection (I/O, not a timer under test)."""
        await asyncio.wait_for(self._disconnected.wait(), timeout)

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}


class FakeOpenAI:
    """The fake's state: what it accepts, its script, and every request it received."""

    def __init__(
        self,
        *,
        models: tuple[str, ...] = ("gpt-fake", "llama3.2"),
        api_key: str | None = None,
        pace: float = 0.0,
    ) -> None:
        self.models = list(models)
        self.api_key = api_key  # None accepts any key, like a local server
        self.pace = pace
        self.requests: list[RecordedRequest] = []
        self._script: deque[Reply] = deque()
        self._new_request = asyncio.Condition()
        self.port = 0
        self._server: HTTPServer | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def script(self, *replies: Reply) -> None:
        """Answer the next requests with these replies, in order, then by default again."""
        self._script.extend(replies)

    def next_reply(self) -> Reply:
        return self._script.popleft() if self._script else Reply()

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    async def wait_for_requests(self, count: int, timeout: float = 10.0) -> RecordedRequest:
        """Wait until `count` chat requests arrived; returns the last of them."""

        async def arrived() -> None:
            async with self._new_request:
                await self._new_request.wait_for(lambda: len(self.chat_requests) >= count)

        await asyncio.wait_for(arrived(), timeout)
        return self.chat_requests[count - 1]

    async def record(self, request: RecordedRequest) -> None:
        self.requests.append(request)
        async with self._new_request:
            self._new_request.notify_all()

    def app(self) -> Application:
        routes: list[Any] = [
            (r"/v1/chat/completions", ChatCompletionsHandler, {"fake": self}),
            (r"/v1/models", ModelsHandler, {"fake": self}),
            (r"/_fake/script", ScriptHandler, {"fake": self}),
            (r"/_fake/requests", RequestsHandler, {"fake": self}),
        ]
        return Application(routes)

    def listen(self, port: int = 0) -> None:
        """Serve on 127.0.0.1 (`port` 0: a free one) on the current event loop."""
        sockets = bind_sockets(port, "127.0.0.1")
        self.port = sockets[0].getsockname()[1]
        self._server = HTTPServer(self.app())
        self._server.add_sockets(sockets)

    async def stop(self) -> None:
        """Stop listening and cut every open connection (stalled answers end too)."""
        if self._server is not None:
            self._server.stop()
            await self._server.close_all_connections()
            self._server = None


class _FakeHandler(RequestHandler):
    def initialize(self, fake: FakeOpenAI) -> None:
        self.fake = fake

    def check_xsrf_cookie(self) -> None:
        pass

    def send_api_error(self, reply: Reply) -> None:
        self.set_status(reply.status)
        for name, value in reply.headers.items():
            self.set_header(name, value)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": reply.error}))
        record = getattr(self, "record", None)
        if record is not None:
            record.finished = True


def _redacted(headers: dict[str, str]) -> dict[str, str]:
    return {
        name: ("[redacted]" if name.lower() in {"authorization", "api-key"} else value)
        for name, value in headers.items()
    }


def _masked(key: str) -> str:
    """A key the way OpenAI echoes a wrong one: its first and last characters only."""
    return key[:3] + "*" * max(0, len(key) - 7) + key[-4:] if len(key) > 8 else "*" * len(key)


class ChatCompletionsHandler(_FakeHandler):
    record: RecordedRequest | None = None

    async def post(self) -> None:
        fake = self.fake
        presented = self.request.headers.get("Authorization", "").removeprefix("Bearer ")
        try:
            body = json.loads(self.request.body or b"null")
        except ValueError:
            body = None
        self.record = RecordedRequest(
            "POST",
            self.request.path,
            _redacted(dict(self.request.headers)),
            body,
            None if fake.api_key is None else presented == fake.api_key,
            time.monotonic(),
        )
        await fake.record(self.record)
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            self.send_api_error(api_error(400, "We could not parse the JSON body of your request."))
            return
        if fake.api_key is not None and presented != fake.api_key:
            message = (
                f"Incorrect API key provided: {_masked(presented)}. You can find your API key "
                "at https://platform.openai.com/account/api-keys."
            )
            self.send_api_error(api_error(401, message, code="invalid_api_key"))
            return
        model = body.get("model")
        if model not in fake.models:
            message = f"The model `{model}` does not exist or you do not have access to it."
            self.send_api_error(api_error(404, message, code="model_not_found"))
            return
        reply = fake.next_reply()
        if reply.status != 200:
            self.send_api_error(reply)
            return
        chunks = reply.chunks if reply.chunks is not None else _echo(body["messages"])
        if body.get("stream"):
            await self._stream(body, reply, chunks)
        else:
            self.finish(_completion(model, "".join(chunks), reply.finish_reason, body))
            self.record.finished = True

    async def _stream(self, body: dict[str, Any], reply: Reply, chunks: list[str]) -> None:
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        model = body["model"]

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            frame: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "system_fingerprint": "fp_fake",
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }
            if include_usage:
                frame["usage"] = None
            return frame

        if reply.stall and reply.stall_before_headers:
            await self._until_gone()
            return
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("x-request-id", f"req_{uuid.uuid4().hex[:16]}")
        pace = fake_pace if (fake_pace := reply.pace) is not None else self.fake.pace
        try:
            await self._send(chunk({"role": "assistant", "content": "", "refusal": None}))
            if reply.stall:
                await self._until_gone()
                return
            for index, text in enumerate(chunks):
                if reply.stall_after is not None and index >= reply.stall_after:
                    await self._until_gone()
                    return
                if reply.drop_after is not None and index >= reply.drop_after:
                    self._cut()
                    return
                if pace > 0:
                    await asyncio.sleep(pace)  # the pace of a real model: streaming needs it
                await self._send(chunk({"content": text}))
            if reply.drop_after is not None:
                self._cut()
                return
            await self._send(chunk({}, reply.finish_reason))
            if include_usage:
                usage = chunk({})
                usage["choices"] = []
                usage["usage"] = _usage(body, "".join(chunks))
                await self._send(usage)
            self.write(b"data: [DONE]\n\n")
            await self.flush()
        except StreamClosedError:
            self.on_connection_close()
            return
        self.finish()
        assert self.record is not None
        self.record.finished = True

    async def _send(self, frame: dict[str, Any]) -> None:
        self.write(b"data: " + json.dumps(frame, separators=(",", ":")).encode() + b"\n\n")
        await self.flush()

    async def _until_gone(self) -> None:
        assert self.record is not None
        await self.record._disconnected.wait()

    def _cut(self) -> None:
        """Drop the connection mid-response, as a crashed or restarted server does."""
        connection: Any = self.request.connection  # tornado's HTTP1Connection
        connection.stream.close()
        assert self.record is not None
        self.record.finished = True  # the server chose to cut: not a client disconnect

    def on_connection_close(self) -> None:
        if self.record is not None:
            self.record.mark_disconnected()


class ModelsHandler(_FakeHandler):
    def get(self) -> None:
        created = int(time.time())
        data = [
            {"id": m, "object": "model", "created": created, "owned_by": "fake"}
            for m in self.fake.models
        ]
        self.finish({"object": "list", "data": data})


class ScriptHandler(_FakeHandler):
    """`POST /_fake/script` with a JSON list of `Reply` fields: queue them."""

    def post(self) -> None:
        replies = [Reply(**fields) for fields in json.loads(self.request.body)]
        self.fake.script(*replies)
        self.finish({"queued": len(replies)})


class RequestsHandler(_FakeHandler):
    """`GET /_fake/requests`: every chat request recorded so far."""

    def get(self) -> None:
        self.finish({"requests": [r.summary() for r in self.fake.chat_requests]})


def _echo(messages: list[Any]) -> list[str]:
    last: dict[str, Any] = next((m for m in reversed(messages) if m.get("role") == "user"), {})
    content = last.get("content")
    text = content if isinstance(content, str) else ""
    return ["You said:"] + [" " + word for word in text.split()]


def _usage(body: dict[str, Any], answer_text: str) -> dict[str, int]:
    prompt = sum(len(str(m.get("content", "")).split()) for m in body["messages"])
    completion = len(answer_text.split())
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _completion(model: str, text: str, finish: str, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": finish,
            }
        ],
        "usage": _usage(body, text),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--pace", type=float, default=0.05, help="seconds between chunks")
    parser.add_argument("--api-key", default=None, help="the only key accepted (default: any)")
    parser.add_argument("--model", action="append", help="a model it serves (repeatable)")
    args = parser.parse_args(argv)

    async def serve() -> None:
        models = tuple(args.model or ("gpt-fake", "llama3.2"))
        fake = FakeOpenAI(models=models, api_key=args.api_key, pace=args.pace)
        fake.listen(args.port)
        print(f"fake OpenAI-compatible server at {fake.base_url}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
