"""Light raw-socket clients for the reader process: HTTP/1.1, SSE and WebSocket (Engine.IO v4).

Everything is an asyncio `Protocol` or a plain stream, with hand-written
HTTP/1.1, an incremental chunked-body decoder and an incremental WebSocket
frame parser, so one process can hold thousands of streams and still not be
the bottleneck. Frames are handed to a callback in batches, one call per
`data_received`, with the monotonic receive time in ns.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
import time
from collections.abc import Callable
from typing import Any

from .common import HOST

FramesCallback = Callable[[Any, list[bytes], int], None]


def _noop(reader: Any, frames: list[bytes], t: int) -> None:
    pass


class HTTPStatusError(Exception):
    def __init__(self, status: int, body: bytes = b"") -> None:
        super().__init__(f"HTTP {status}: {body[:200]!r}")
        self.status = status
        self.body = body


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


class HTTPConn:
    """One keep-alive HTTP/1.1 connection for REST calls (JSON in, status and body out)."""

    def __init__(self, port: int, headers: dict[str, str] | None = None) -> None:
        self.port = port
        self.headers = headers or {}
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(HOST, self.port)

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> tuple[int, bytes]:
        return await asyncio.wait_for(self._request(method, path, body, headers), timeout)

    async def _request(
        self, method: str, path: str, body: Any, headers: dict[str, str] | None
    ) -> tuple[int, bytes]:
        if self._writer is None or self._writer.is_closing():
            await self._connect()
        assert self._reader is not None and self._writer is not None
        payload = b"" if body is None else json.dumps(body).encode()
        lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{self.port}"]
        for name, value in {**self.headers, **(headers or {})}.items():
            lines.append(f"{name}: {value}")
        if body is not None or method in ("POST", "PUT"):
            lines.append("Content-Type: application/json")
            lines.append(f"Content-Length: {len(payload)}")
        self._writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + payload)
        head = await self._reader.readuntil(b"\r\n\r\n")
        status, resp_headers = _parse_head(head[:-4])
        data = b""
        if "content-length" in resp_headers:
            data = await self._reader.readexactly(int(resp_headers["content-length"]))
        elif resp_headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunk = await self._reader.readexactly(size + 2)
                if size == 0:
                    break
                parts.append(chunk[:-2])
            data = b"".join(parts)
        if resp_headers.get("connection", "").lower() == "close":
            self.close()
        return status, data

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class _Buffered(asyncio.BufferedProtocol):
    """Reads into one preallocated buffer per connection.

    A plain `Protocol` makes asyncio allocate a fresh 256 KiB bytes object for
    every recv (an mmap/mremap/munmap each time), which profiling showed to be
    40% of the reader's CPU with many small frames.
    """

    _rbuf: bytearray
    _rview: memoryview

    def get_buffer(self, sizehint: int) -> memoryview:
        try:
            return self._rview
        except AttributeError:
            self._rbuf = bytearray(READ_SIZE)
            self._rview = memoryview(self._rbuf)
            return self._rview

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(self._rview[:nbytes]))

    def data_received(self, data: bytes) -> None:
        raise NotImplementedError


READ_SIZE = 65536


class SSEReader(_Buffered):
    """One SSE stream. `opened` resolves with the first frame (the welcome); every later
    frame goes to `on_frames(reader, frames, t_ns)`, one call per network read."""

    def __init__(self, request: bytes, on_frames: FramesCallback = _noop) -> None:
        loop = asyncio.get_running_loop()
        self.request = request
        self.on_frames = on_frames
        self.opened: asyncio.Future[bytes] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.status: int | None = None
        self.state: dict[str, Any] = {}  # scratch space for the scenario's callback
        self._head = b""
        self._raw = b""
        self._buf = b""
        self._chunk_left = 0
        self._chunked = True

    @classmethod
    async def open(
        cls,
        port: int,
        path: str,
        headers: dict[str, str] | None = None,
        on_frames: FramesCallback = _noop,
        timeout: float = 30.0,
    ) -> SSEReader:
        lines = [f"GET {path} HTTP/1.1", f"Host: {HOST}:{port}", "Accept: text/event-stream"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        request = ("\r\n".join(lines) + "\r\n\r\n").encode()
        loop = asyncio.get_running_loop()
        _, reader = await asyncio.wait_for(
            loop.create_connection(lambda: cls(request, on_frames), HOST, port), timeout
        )
        await asyncio.wait_for(reader.opened, timeout)
        return reader

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"stream closed before welcome ({exc})"))
        if not self.closed.done():
            self.closed.set_result(None)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        t = time.monotonic_ns()
        if self.status is None:
            self._head += data
            i = self._head.find(b"\r\n\r\n")
            if i < 0:
                return
            self.status, headers = _parse_head(self._head[:i])
            data = self._head[i + 4 :]
            self._head = b""
            self._chunked = headers.get("transfer-encoding", "").lower() == "chunked"
            if self.status != 200:
                if not self.opened.done():
                    self.opened.set_exception(HTTPStatusError(self.status, data))
                self.close()
                return
        body = self._dechunk(data) if self._chunked else data
        if not body:
            return
        buf = self._buf + body if self._buf else body
        frames = buf.split(b"\n\n")
        self._buf = frames.pop()
        if not frames:
            return
        if not self.opened.done():
            self.opened.set_result(frames.pop(0))
            if not frames:
                return
        self.on_frames(self, frames, t)

    def _dechunk(self, data: bytes) -> bytes:
        if self._raw:
            data = self._raw + data
            self._raw = b""
        out = []
        pos = 0
        n = len(data)
        while pos < n:
            left = self._chunk_left
            if left:
                end = pos + left
                if end <= n:
                    out.append(data[pos:end])
                    self._chunk_left = 0
                    pos = end
                else:
                    out.append(data[pos:])
                    self._chunk_left = end - n
                    break
            else:
                i = data.find(b"\r\n", pos)
                if i < 0:
                    self._raw = data[pos:]
                    break
                if i == pos:  # the CRLF that ends a chunk's data
                    pos += 2
                    continue
                size = int(data[pos:i].split(b";", 1)[0], 16)
                pos = i + 2
                if size == 0:
                    break
                self._chunk_left = size
        return b"".join(out)


class WSReader(_Buffered):
    """A raw WebSocket client. `opened` resolves on `101`, or fails with `HTTPStatusError`;
    `closed_code` holds the close frame's (code, reason) once it arrives."""

    def __init__(self, request: bytes, on_messages: Callable[[WSReader, list[bytes], int], None]):
        loop = asyncio.get_running_loop()
        self.request = request
        self.on_messages = on_messages
        self.opened: asyncio.Future[None] = loop.create_future()
        self.close_frame: asyncio.Future[tuple[int, str]] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.status: int | None = None
        self.state: dict[str, Any] = {}
        self._head = b""
        self._buf = b""
        self._fragments: list[bytes] = []

    @staticmethod
    def handshake(port: int, path: str, origin: str | None) -> bytes:
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {HOST}:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        if origin is not None:
            lines.append(f"Origin: {origin}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    @classmethod
    async def connect(
        cls,
        port: int,
        path: str,
        on_messages: Callable[[WSReader, list[bytes], int], None],
        origin: str | None = None,
        extra_headers: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> WSReader:
        request = cls.handshake(port, path, origin)
        if extra_headers:
            extra = "".join(f"{k}: {v}\r\n" for k, v in extra_headers.items()).encode()
            request = request[:-2] + extra + b"\r\n"
        loop = asyncio.get_running_loop()
        _, reader = await asyncio.wait_for(
            loop.create_connection(lambda: cls(request, on_messages), HOST, port), timeout
        )
        return reader

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"closed before upgrade ({exc})"))
        if not self.close_frame.done():
            self.close_frame.set_result((1006, "abnormal closure"))
        if not self.closed.done():
            self.closed.set_result(None)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def send_text(self, text: str | bytes) -> None:
        data = text.encode() if isinstance(text, str) else text
        self._send_frame(0x1, data)

    def _send_frame(self, opcode: int, data: bytes) -> None:
        n = len(data)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        mask = os.urandom(4)
        masked = _mask(data, mask)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(head + mask + masked)

    def data_received(self, data: bytes) -> None:
        t = time.monotonic_ns()
        if self.status is None:
            self._head += data
            i = self._head.find(b"\r\n\r\n")
            if i < 0:
                return
            self.status, _ = _parse_head(self._head[:i])
            data = self._head[i + 4 :]
            self._head = b""
            if self.status != 101:
                if not self.opened.done():
                    self.opened.set_exception(HTTPStatusError(self.status, data))
                self.close()
                return
            self.opened.set_result(None)
        buf = self._buf + data if self._buf else data
        messages = []
        pos = 0
        n = len(buf)
        while n - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            length = b1 & 0x7F
            hdr = 2
            if length == 126:
                if n - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                hdr = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                hdr = 10
            if b1 & 0x80:  # a server never masks, but be tolerant
                hdr += 4
            end = pos + hdr + length
            if end > n:
                break
            payload = buf[pos + hdr : end]
            if b1 & 0x80:
                payload = _mask(payload, buf[pos + hdr - 4 : pos + hdr])
            pos = end
            opcode = b0 & 0x0F
            if opcode in (0x1, 0x2, 0x0):
                if not b0 & 0x80:
                    self._fragments.append(payload)
                    continue
                if self._fragments:
                    payload = b"".join([*self._fragments, payload])
                    self._fragments = []
                messages.append(payload)
            elif opcode == 0x8:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                if not self.close_frame.done():
                    self.close_frame.set_result((code, payload[2:].decode("utf-8", "replace")))
                self._send_frame(0x8, payload[:2])
                self.close()
            elif opcode == 0x9:
                self._send_frame(0xA, payload)
        self._buf = buf[pos:]
        if messages:
            self.on_messages(self, messages, t)


def _mask(data: bytes, mask: bytes) -> bytes:
    n = len(data)
    if not n:
        return b""
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(data, "big") ^ key).to_bytes(n, "big")


class EIOWatcher:
    """A Socket.IO client over a raw WebSocket speaking Engine.IO v4.

    Answers pings, connects to the default namespace, joins a room with an ack,
    and passes every event packet (``42[...]``) to `on_frames` as the SSE readers do.
    """

    def __init__(self, on_frames: FramesCallback = _noop) -> None:
        loop = asyncio.get_running_loop()
        self.on_frames = on_frames
        self.ws: WSReader | None = None
        self.connected: asyncio.Future[None] = loop.create_future()
        self.state: dict[str, Any] = {}
        self._acks: dict[int, asyncio.Future[bytes]] = {}
        self._next_ack = 0

    async def connect(self, port: int, timeout: float = 30.0) -> None:
        self.ws = await WSReader.connect(
            port, "/socket.io/?EIO=4&transport=websocket", self._on_messages, timeout=timeout
        )
        await asyncio.wait_for(self.ws.opened, timeout)
        await asyncio.wait_for(self.connected, timeout)

    def _on_messages(self, ws: WSReader, messages: list[bytes], t: int) -> None:
        events = []
        for m in messages:
            if m.startswith(b"42"):
                events.append(m)
            elif m.startswith(b"43"):
                i = 2
                while i < len(m) and 48 <= m[i] <= 57:
                    i += 1
                fut = self._acks.pop(int(m[2:i]), None)
                if fut is not None and not fut.done():
                    fut.set_result(m[i:])
            elif m == b"2":
                ws.send_text(b"3")
            elif m.startswith(b"0{"):
                ws.send_text(b"40")
            elif m.startswith(b"40"):
                if not self.connected.done():
                    self.connected.set_result(None)
            elif m.startswith((b"44", b"1")) and not self.connected.done():
                # connect refused (44) or the server closed the session (1)
                self.connected.set_exception(ConnectionError(m.decode(errors="replace")))
        if events:
            self.on_frames(self, events, t)

    def emit(self, event: str, data: Any) -> asyncio.Future[bytes]:
        """Emit an event with an ack; the future resolves with the ack's JSON."""
        assert self.ws is not None
        self._next_ack += 1
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._acks[self._next_ack] = fut
        self.ws.send_text(b"42%d" % self._next_ack + json.dumps([event, data]).encode())
        return fut

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()

    @property
    def closed(self) -> asyncio.Future[None]:
        assert self.ws is not None
        return self.ws.closed
