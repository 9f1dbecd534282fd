"""The alternative a Python user would pick: python-socketio's AsyncServer emitting to a room.

Served by its own Tornado integration (``socketio.get_tornado_handler``), one process:

    python -m bench.sio_server --port P

Socket.IO events: ``join`` (data: room name, acknowledged once the client is in
the room) and ``send`` (data ``{"sessionId", "clientMsgId", "text"}``,
acknowledged with the receipt). ``POST /send`` takes the same body over HTTP,
which is how the fan-out and latency scenarios trigger every server alike.
The room's answer is the same as the floor's and chatbridge's: ``user_message``,
then per the agent command in the text ``message_start``, ``block_delta``s,
``message_end``, each one ``sio.emit(type, event, room=R)``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from collections import deque
from typing import Any

import socketio
from tornado import httpserver, web

from .agents import parse_command
from .common import HOST, chunk_text

sio = socketio.AsyncServer(async_mode="tornado", cors_allowed_origins="*")


class Room:
    def __init__(self, name: str) -> None:
        self.name = name
        self.seq = 0
        self.receipts: dict[str, int] = {}
        self.pending: deque[tuple[int, str]] = deque()
        self.runner: asyncio.Task[None] | None = None

    async def publish(self, event_type: str, **fields: object) -> None:
        self.seq += 1
        event = {"type": event_type, "sessionId": self.name, "seq": self.seq, **fields}
        await sio.emit(event_type, event, room=self.name)

    async def send(self, cmid: str, text: str) -> dict[str, Any]:
        if cmid in self.receipts:
            return {"accepted": True, "seq": self.receipts[cmid], "duplicate": True}
        # Take the seq before the first await, so receipts follow acceptance order.
        self.receipts[cmid] = self.seq + 1
        self.pending.append((self.seq + 1, text))
        await self.publish("user_message", clientMsgId=cmid, text=text, connectionId=None)
        if self.runner is None:
            self.runner = asyncio.get_running_loop().create_task(self.run())
        return {"accepted": True, "seq": self.receipts[cmid], "duplicate": False}

    async def run(self) -> None:
        try:
            while self.pending:
                seq, text = self.pending.popleft()
                mid = f"m{seq}"
                await self.publish("message_start", messageId=mid, replyTo=seq)
                mode, count, rate = parse_command(text, 10)
                if mode == "burst":
                    for _ in range(count):
                        # emit() awaits its per-recipient tasks, so it yields to the loop itself.
                        await self.publish("block_delta", messageId=mid, text=chunk_text(False))
                else:
                    interval = int(1e9 / rate)
                    start = time.monotonic_ns()
                    for i in range(count):
                        delay = (start + i * interval - time.monotonic_ns()) / 1e9
                        if delay > 0:
                            await asyncio.sleep(delay)
                        await self.publish("block_delta", messageId=mid, text=chunk_text(True))
                await self.publish("message_end", messageId=mid)
        finally:
            self.runner = None


ROOMS: dict[str, Room] = {}


def room(name: str) -> Room:
    if name not in ROOMS:
        ROOMS[name] = Room(name)
    return ROOMS[name]


@sio.event
async def join(sid: str, name: str) -> bool:
    await sio.enter_room(sid, name)
    return True


@sio.event
async def send(sid: str, body: dict[str, Any]) -> dict[str, Any]:
    return await room(body["sessionId"]).send(body["clientMsgId"], body["text"])


class SendHandler(web.RequestHandler):
    async def post(self) -> None:
        body = json.loads(self.request.body)
        receipt = await room(body["sessionId"]).send(body["clientMsgId"], body["text"])
        self.set_status(200 if receipt["duplicate"] else 202)
        self.finish(receipt)


class PingHandler(web.RequestHandler):
    def get(self) -> None:
        self.finish("ok")


def _handler() -> type:
    """socketio's Tornado handler with TCP_NODELAY, as any latency-minded deployment sets it.

    Tornado leaves Nagle's algorithm on for WebSockets, and python-socketio does not
    turn it off: then an ack followed by an event waits for the client's delayed ACK,
    about 40 ms on Linux, which would measure a socket option, not socketio.
    """
    base = socketio.get_tornado_handler(sio)

    class Handler(base):  # type: ignore[misc, valid-type]
        async def open(self, *args: Any, **kwargs: Any) -> None:
            self.set_nodelay(True)
            await super().open(*args, **kwargs)

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    async def serve() -> None:
        app = web.Application(
            [
                ("/socket.io/", _handler()),
                ("/send", SendHandler),
                ("/ping", PingHandler),
            ]
        )
        server = httpserver.HTTPServer(app)
        server.listen(args.port, HOST)
        await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
