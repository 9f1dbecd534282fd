"""Stop and time to first token, with `OpenAIAgent` against the fake OpenAI server.

    python -m bench.stop                 # 3 repetitions of 200 trials per figure (~1 min)
    python -m bench.stop --trials 50 --reps 1

Not part of `python -m bench` (and it never rewrites RESULTS.md): it prints one
table. Two processes besides this one: ours (jupyter_server + the extension on
its default SQLite store, `agent_class = OpenAIAgent`, `base_url` the fake) and
the fake OpenAI-compatible server of the tests (`python -m tests.fake_openai
--pace 0`). Both log their times with `time.monotonic()`, one clock for every
process on Linux, so the fake's record of when its client disconnected is
comparable with the moment this process sent the Stop.

- **Stop -> message_end**: an answer whose upstream sent one chunk and then
  stalls; once its first `block_delta` is on the session WebSocket, `POST
  sessions/{id}/stop`; the time until the `message_end` frame (reason
  `stopped`) arrives. Target: p99 < 100 ms.
- **Stop -> upstream closed**: from the same Stop until the fake saw its client
  (ours' `openai` SDK stream) disconnect. Target: p99 < 100 ms.
- **Time to first token**: a send on the session WebSocket until the first
  `block_delta` frame, against the same SDK (`openai.AsyncOpenAI`, one client,
  streaming) calling the fake directly until its first content chunk. Ours runs
  with `max_context_chars=0` here so both send the same request. Target: p99 at
  most 1.2x direct + 5 ms.

Every trial waits for I/O with a time-out; every process is killed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from typing import Any

from tornado.websocket import WebSocketClientConnection, websocket_connect

from .client import HTTPConn
from .common import BASE_URL, HOST, TOKEN, percentile
from .servers import REPO, ServerProcess, free_port

WAIT = 10.0
EXTRA: dict[str, object] = {}  # more ChatBridgeApp config for ours (--store-path)


class OursOnFake(ServerProcess):
    """Ours with `OpenAIAgent` pointed at the fake."""

    def __init__(self, fake_url: str, extra: dict[str, object]) -> None:
        super().__init__("ours", {"agent_class": "jupyter_chatbridge.OpenAIAgent", **extra})
        self.fake_url = fake_url

    def check_store(self) -> None:
        if "store_path" in self.config:
            return
        # Since the per-folder store (main), the file is one level deeper than
        # servers.DEFAULT_STORE_FILE says; still inside this server's temporary dir.
        if not any((self.tmp / "data" / "chatbridge").rglob("sessions.sqlite3")):
            raise RuntimeError(f"ours started without its store in {self.tmp}:\n{self.log_tail()}")

    def command(self) -> list[str]:
        return [
            *super().command(),
            f"--OpenAIAgent.base_url={self.fake_url}",
            "--OpenAIAgent.model=gpt-fake",
        ]


class Fake:
    """The fake OpenAI server in its own process."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}/v1"
        self.proc: subprocess.Popen[bytes] | None = None
        self.conn = HTTPConn(self.port)

    async def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fake_openai", "--port", str(self.port), "--pace", "0"],
            cwd=str(REPO),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                status, _ = await self.conn.request("GET", "/v1/models", timeout=2)
                if status == 200:
                    return
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
                self.conn = HTTPConn(self.port)
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("the fake OpenAI server did not start")
            await asyncio.sleep(0.1)

    async def script(self, *replies: dict[str, Any]) -> None:
        status, _ = await self.conn.request("POST", "/_fake/script", list(replies))
        assert status == 200, status

    async def requests(self) -> list[dict[str, Any]]:
        status, body = await self.conn.request("GET", "/_fake/requests")
        assert status == 200, status
        return list(json.loads(body)["requests"])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


class SessionSocket:
    """One session of ours over its WebSocket, and a keep-alive REST connection."""

    def __init__(self, server: ServerProcess, session_id: str) -> None:
        self.server = server
        self.session_id = session_id
        self.rest = HTTPConn(server.port, server.auth_headers())
        self.ws: WebSocketClientConnection | None = None

    async def open(self) -> None:
        status, _ = await self.rest.request(
            "POST", f"{BASE_URL}chatbridge/api/sessions", {"sessionId": self.session_id}
        )
        assert status == 201, status
        url = (
            f"ws://{HOST}:{self.server.port}{BASE_URL}chatbridge/api/sessions/{self.session_id}/ws"
        )
        from tornado.httpclient import HTTPRequest

        self.ws = await websocket_connect(
            HTTPRequest(url, headers={"Authorization": f"token {TOKEN}"})
        )

    def send(self, text: str) -> str:
        assert self.ws is not None
        client_msg_id = uuid.uuid4().hex
        self.ws.write_message(
            json.dumps({"type": "send", "clientMsgId": client_msg_id, "text": text})
        )
        return client_msg_id

    async def until(self, kind: str) -> dict[str, Any]:
        """Read frames until one of type `kind`; returns it."""
        assert self.ws is not None
        while True:
            raw = await asyncio.wait_for(self.ws.read_message(), WAIT)
            if raw is None:
                raise RuntimeError("the session socket closed")
            frame = json.loads(raw)
            if frame.get("type") == kind:
                return frame  # type: ignore[no-any-return]

    async def stop(self) -> dict[str, Any]:
        status, body = await self.rest.request(
            "POST", f"{BASE_URL}chatbridge/api/sessions/{self.session_id}/stop", {}
        )
        assert status == 200, (status, body)
        return json.loads(body)  # type: ignore[no-any-return]

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
        self.rest.close()


async def stop_trials(fake: Fake, trials: int, warmup: int) -> tuple[list[float], list[float]]:
    """Stop -> message_end and Stop -> upstream closed, in ms, one per trial."""
    server = await OursOnFake(fake.url, dict(EXTRA)).start()
    session = SessionSocket(server, "stop")
    try:
        await session.open()
        first_request = len(await fake.requests())
        stop_sent: list[float] = []
        to_end: list[float] = []
        for _ in range(warmup + trials):
            await fake.script({"chunks": ["partial ", "never sent"], "stall_after": 1})
            session.send("tell me everything")
            await session.until("block_delta")
            started = time.monotonic()
            stopping = asyncio.ensure_future(session.stop())
            end = await session.until("message_end")
            ended = time.monotonic()
            answer = await asyncio.wait_for(stopping, WAIT)
            assert end.get("reason") == "stopped" and answer["reason"] == "stopped", (end, answer)
            stop_sent.append(started)
            to_end.append((ended - started) * 1000)
        records = (await fake.requests())[first_request:]
        assert len(records) == len(stop_sent), (len(records), len(stop_sent))
        to_close: list[float] = []
        for record, started in zip(records, stop_sent, strict=True):
            deadline = time.monotonic() + WAIT
            while record["disconnected_at"] is None and time.monotonic() < deadline:
                await asyncio.sleep(0.01)  # only the last one may still be closing
                record = (await fake.requests())[first_request + len(to_close)]
            assert record["disconnected_at"] is not None, record
            to_close.append((record["disconnected_at"] - started) * 1000)
        return to_end[warmup:], to_close[warmup:]
    finally:
        session.close()
        server.stop()


async def ttft_trials(fake: Fake, trials: int, warmup: int) -> tuple[list[float], list[float]]:
    """Time to first token through ours and directly with the SDK, in ms, interleaved."""
    from openai import AsyncOpenAI

    server = await OursOnFake(fake.url, {**EXTRA, "max_context_chars": 0}).start()
    session = SessionSocket(server, "ttft")
    direct = AsyncOpenAI(base_url=fake.url, api_key="no-key-set", max_retries=0)
    ours: list[float] = []
    theirs: list[float] = []
    try:
        await session.open()
        for _ in range(warmup + trials):
            started = time.monotonic()
            session.send("hello there")
            await session.until("block_delta")
            ours.append((time.monotonic() - started) * 1000)
            await session.until("message_end")

            started = time.monotonic()
            stream = await direct.chat.completions.create(
                model="gpt-fake",
                messages=[{"role": "user", "content": "hello there"}],
                stream=True,
            )
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    theirs.append((time.monotonic() - started) * 1000)
                    break
            async for _chunk in stream:  # read it to the end, as ours does, then reuse
                pass
        return ours[warmup:], theirs[warmup:]
    finally:
        await direct.close()
        session.close()
        server.stop()


def _per_rep(values: list[list[float]], q: float) -> list[float]:
    return [percentile(sorted(rep), q) for rep in values]


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument(
        "--store-path", default=None, help="ours' store_path (default: its default SQLite store)"
    )
    args = parser.parse_args(argv)
    if args.store_path is not None:
        EXTRA["store_path"] = args.store_path
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    fake = Fake()
    await fake.start()
    figures: dict[str, list[list[float]]] = {k: [] for k in ("end", "close", "ours", "direct")}
    try:
        for _ in range(args.reps):
            to_end, to_close = await stop_trials(fake, args.trials, args.warmup)
            figures["end"].append(to_end)
            figures["close"].append(to_close)
            ours, direct = await ttft_trials(fake, args.trials, args.warmup)
            figures["ours"].append(ours)
            figures["direct"].append(direct)
    finally:
        fake.stop()
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{args.reps} repetitions x {args.trials} trials; median of the repetitions (min-max)")

    def cell(key: str, q: float) -> tuple[float, str]:
        per_rep = _per_rep(figures[key], q)
        return _median(per_rep), f"{_median(per_rep):.2f} ({min(per_rep):.2f}-{max(per_rep):.2f})"

    for q in (50, 99):
        _, end_text = cell("end", q)
        _, close_text = cell("close", q)
        print(f"p{q} Stop -> message_end [ms]: {end_text}" + ("  target < 100" if q == 99 else ""))
        print(
            f"p{q} Stop -> upstream closed [ms]: {close_text}"
            + ("  target < 100" if q == 99 else "")
        )
    for q in (50, 99):
        ours_ms, ours_text = cell("ours", q)
        direct_ms, direct_text = cell("direct", q)
        bound = 1.2 * direct_ms + 5
        passed = "pass" if ours_ms <= bound else "MISS"
        verdict = f"  target <= 1.2x direct + 5 ms = {bound:.2f}: {passed}"
        print(
            f"p{q} time to first token [ms]: ours {ours_text}, direct {direct_text}, "
            f"ratio {ours_ms / direct_ms:.2f}x" + (verdict if q == 99 else "")
        )


if __name__ == "__main__":
    asyncio.run(main())
