"""The floor: a minimal raw Tornado SSE fan-out server, one process.

It does only what a fan-out server cannot avoid: per event, serialise the
frame once and, for every watcher of the room, write it and flush it. No
auth, no replay buffer, no per-connection state beyond the handler itself.
Our stack does everything this does plus auth, ids, replay and dedup, so it
cannot beat it; the suite reports our figures as a ratio of these.

    python -m bench.floor_server --port P

``GET /events?room=R`` opens a stream (first frame ``welcome``) and joins room R.
``POST /send`` ``{"sessionId", "clientMsgId", "text"}`` mirrors chatbridge's send:
dedup by clientMsgId, ``user_message`` at once, then the agent command in the
text (see bench/agents.py) answered in order per room: ``message_start``,
chunks as ``block_delta``, ``message_end``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from collections import deque
from typing import Any

from tornado import httpserver, web

from .agents import parse_command
from .common import HOST, chunk_text, event_json


def _swallow(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class Room:
    def __init__(self, name: str) -> None:
        self.name = name
        self.watchers: set[EventsHandler] = set()
        self.seq = 0
        self.receipts: dict[str, int] = {}
        self.pending: deque[tuple[int, str]] = deque()
        self.runner: asyncio.Task[None] | None = None

    def publish(self, event_type: str, **fields: object) -> None:
        self.seq += 1
        data = event_json(event_type, self.name, self.seq, **fields)
        payload = f"id: {self.seq}\nevent: {event_type}\ndata: {data}\n\n".encode()
        for handler in self.watchers:
            handler.write(payload)
            handler.flush().add_done_callback(_swallow)

    async def run(self) -> None:
        try:
            while self.pending:
                seq, text = self.pending.popleft()
                mid = f"m{seq}"
                self.publish("message_start", messageId=mid, replyTo=seq)
                mode, count, rate = parse_command(text, 10)
                if mode == "burst":
                    for _ in range(count):
                        self.publish("block_delta", messageId=mid, text=chunk_text(False))
                        await asyncio.sleep(0)
                else:
                    interval = int(1e9 / rate)
                    start = time.monotonic_ns()
                    for i in range(count):
                        delay = (start + i * interval - time.monotonic_ns()) / 1e9
                        if delay > 0:
                            await asyncio.sleep(delay)
                        self.publish("block_delta", messageId=mid, text=chunk_text(True))
                self.publish("message_end", messageId=mid)
        finally:
            self.runner = None


ROOMS: dict[str, Room] = {}


def room(name: str) -> Room:
    if name not in ROOMS:
        ROOMS[name] = Room(name)
    return ROOMS[name]


class EventsHandler(web.RequestHandler):
    async def get(self) -> None:
        self._room = room(self.get_query_argument("room"))
        self._done = asyncio.Event()
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        self.write(b"event: welcome\ndata: {}\n\n")
        self.flush().add_done_callback(_swallow)
        self._room.watchers.add(self)
        await self._done.wait()

    def on_connection_close(self) -> None:
        self._room.watchers.discard(self)
        self._done.set()


class SendHandler(web.RequestHandler):
    def post(self) -> None:
        body = json.loads(self.request.body)
        r = room(body["sessionId"])
        cmid = body["clientMsgId"]
        if cmid in r.receipts:
            self.set_status(200)
            self.finish({"accepted": True, "seq": r.receipts[cmid], "duplicate": True})
            return
        r.publish("user_message", clientMsgId=cmid, text=body["text"], connectionId=None)
        r.receipts[cmid] = r.seq
        r.pending.append((r.seq, body["text"]))
        if r.runner is None:
            r.runner = asyncio.get_running_loop().create_task(r.run())
        self.set_status(202)
        self.finish({"accepted": True, "seq": r.receipts[cmid], "duplicate": False})


class PingHandler(web.RequestHandler):
    def get(self) -> None:
        self.finish("ok")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    async def serve() -> None:
        app = web.Application(
            [("/events", EventsHandler), ("/send", SendHandler), ("/ping", PingHandler)]
        )
        server = httpserver.HTTPServer(app)
        server.listen(args.port, HOST)
        await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
