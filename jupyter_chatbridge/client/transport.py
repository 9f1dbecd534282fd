"""HTTP for the client: REST calls, and an event-stream GET that can be cut at will.

REST goes through tornado's `AsyncHTTPClient`. The stream uses tornado's own
HTTP/1.1 client connection directly, because `fetch()` cannot be cancelled, and
a client must be able to drop a stream that went silent (a dead Wi-Fi link
sends no FIN) and reconnect.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

from tornado import httputil
from tornado.http1connection import HTTP1Connection, HTTP1ConnectionParameters
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.iostream import IOStream, StreamClosedError
from tornado.tcpclient import TCPClient

# An event stream is one endless chunked body: its total size must not be capped
# (the SSE parser bounds each line and event instead).
_UNBOUNDED_BODY = 1 << 62
_MAX_ERROR_BODY = 64 * 1024


class TransportError(ConnectionError):
    """The server could not be reached, or the connection broke (transient)."""


@dataclass(frozen=True)
class Response:
    """A REST answer: status, parsed JSON body (None if empty or not JSON) and headers."""

    status: int
    body: Any
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def retry_after(self) -> float | None:
        """The Retry-After header in seconds, if present and numeric."""
        value = self.headers.get("Retry-After")
        try:
            return float(value) if value is not None else None
        except ValueError:
            return None

    @property
    def error(self) -> str:
        """The contract's human-readable error, or the status."""
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), str):
            return str(self.body["error"])
        return f"HTTP {self.status}"


class HTTPStatusError(Exception):
    """A request answered with an unexpected status; `status` drives classification."""

    def __init__(self, status: int, message: str, body: Any = None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.body = body

    @property
    def code(self) -> str | None:
        """The contract's machine code (`session_unknown`, …), if the body had one."""
        if isinstance(self.body, dict) and isinstance(self.body.get("code"), str):
            return str(self.body["code"])
        return None


def _parse_json(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


class HttpTransport:
    """Where the server is and how to authenticate to it."""

    def __init__(
        self,
        server_url: str,
        token: str | None = None,
        *,
        request_timeout: float = 30.0,
        connect_timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if not server_url.startswith(("http://", "https://")):
            raise ValueError(f"server_url must start with http:// or https://: {server_url!r}")
        self.server_url = server_url.rstrip("/") + "/"
        self.token = token
        self.request_timeout = request_timeout
        self.connect_timeout = connect_timeout
        self.ssl_context = ssl_context

    def url(self, path: str, query: Mapping[str, Any] | None = None) -> str:
        """An absolute URL for a path relative to the server's base_url."""
        url = self.server_url + path.lstrip("/")
        if query:
            url += "?" + urlencode({k: v for k, v in query.items() if v is not None})
        return url

    def auth_headers(self) -> dict[str, str]:
        """The Authorization header for the token, if any."""
        return {"Authorization": f"token {self.token}"} if self.token else {}

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: Mapping[str, str] | None = None,
        query: Mapping[str, Any] | None = None,
    ) -> Response:
        """One REST call. Raises `TransportError` when no HTTP answer came back."""
        all_headers = {**self.auth_headers(), **(headers or {})}
        payload: str | None = None
        if body is not None:
            payload = json.dumps(body)
            all_headers.setdefault("Content-Type", "application/json")
        elif method in ("POST", "PUT", "PATCH"):
            payload = ""
        request = HTTPRequest(
            self.url(path, query),
            method=method,
            headers=all_headers,
            body=payload,
            request_timeout=self.request_timeout,
            connect_timeout=self.connect_timeout,
            ssl_options=self.ssl_context,
            allow_nonstandard_methods=True,
        )
        try:
            response = await AsyncHTTPClient().fetch(request, raise_error=False)
        except (OSError, StreamClosedError) as exc:
            raise TransportError(f"{method} {path}: {exc}") from exc
        except HTTPClientError as exc:
            # raise_error=False still raises 599s of its own: a connection closed before
            # the answer (HTTPStreamClosedError) is one.
            if exc.code != 599:
                raise
            raise TransportError(f"{method} {path}: {exc}") from exc
        if response.code == 599:  # tornado's "no HTTP response": network error or time-out
            raise TransportError(f"{method} {path}: {response.error}")
        return Response(response.code, _parse_json(response.body or b""), response.headers)

    async def open_stream(
        self,
        path: str,
        query: Mapping[str, Any] | None,
        headers: Mapping[str, str],
        on_data: Callable[[bytes], None],
    ) -> StreamConnection:
        """Connect and send a streaming GET; read it with `StreamConnection.read`."""
        connection = StreamConnection(self, path, query, headers, on_data)
        await connection.connect()
        return connection


class StreamConnection:
    """One streaming GET on its own socket. `abort()` cuts it from any callback."""

    def __init__(
        self,
        transport: HttpTransport,
        path: str,
        query: Mapping[str, Any] | None,
        headers: Mapping[str, str],
        on_data: Callable[[bytes], None],
    ) -> None:
        self._transport = transport
        self._url = urlsplit(transport.url(path, query))
        self._headers = {**transport.auth_headers(), **headers}
        self._on_data = on_data
        self._stream: IOStream | None = None
        self._delegate = _StreamDelegate(on_data, self.abort)

    async def connect(self) -> None:
        """Open the socket and send the request."""
        https = self._url.scheme == "https"
        host = self._url.hostname or "127.0.0.1"
        port = self._url.port or (443 if https else 80)
        ssl_options: Any = None
        if https:
            ssl_options = self._transport.ssl_context or ssl.create_default_context()
        try:
            self._stream = await TCPClient().connect(
                host, port, ssl_options=ssl_options, timeout=self._transport.connect_timeout
            )
        except (OSError, StreamClosedError, TimeoutError) as exc:
            raise TransportError(f"cannot connect to {host}:{port}: {exc}") from exc
        self._stream.set_nodelay(True)
        self._connection = HTTP1Connection(
            self._stream,
            True,
            HTTP1ConnectionParameters(
                no_keep_alive=True,
                header_timeout=self._transport.request_timeout,
                max_body_size=_UNBOUNDED_BODY,
            ),
        )
        target = self._url.path + (f"?{self._url.query}" if self._url.query else "")
        request_headers = httputil.HTTPHeaders(
            {"Host": self._url.netloc, "Accept": "text/event-stream", **self._headers}
        )
        self._connection.write_headers(
            httputil.RequestStartLine("GET", target, "HTTP/1.1"), request_headers
        )
        self._connection.finish()

    async def read(self) -> None:
        """Read until the stream ends. Raises `HTTPStatusError` for a non-200 answer and
        `TransportError` when the connection breaks or is aborted."""
        delegate = self._delegate
        try:
            await self._connection.read_response(delegate)
        except (StreamClosedError, OSError, httputil.HTTPInputError) as exc:
            if delegate.failure is not None:
                raise delegate.failure from exc
            raise TransportError(f"event stream broke: {exc}") from exc
        finally:
            self.abort()
        if delegate.status is None:
            raise TransportError("event stream closed before any answer")
        if delegate.status != 200:
            body = _parse_json(bytes(delegate.error_body))
            message = body.get("error") if isinstance(body, dict) else None
            raise HTTPStatusError(delegate.status, str(message or delegate.reason), body)
        if delegate.failure is not None:
            raise delegate.failure
        raise TransportError("event stream ended")

    def abort(self) -> None:
        """Close the socket now; `read` then ends with a `TransportError`."""
        if self._stream is not None and not self._stream.closed():
            self._stream.close()


class _StreamDelegate(httputil.HTTPMessageDelegate):
    def __init__(self, on_data: Callable[[bytes], None], abort: Callable[[], None]) -> None:
        self._on_data = on_data
        self._abort = abort
        self.status: int | None = None
        self.reason = ""
        self.error_body = bytearray()
        self.failure: Exception | None = None

    def headers_received(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
    ) -> None:
        assert isinstance(start_line, httputil.ResponseStartLine)
        self.status = start_line.code
        self.reason = start_line.reason

    def data_received(self, chunk: bytes) -> None:
        if self.status != 200:
            if len(self.error_body) < _MAX_ERROR_BODY:
                self.error_body += chunk[: _MAX_ERROR_BODY - len(self.error_body)]
            return
        if self.failure is not None:
            return
        try:
            self._on_data(chunk)
        except Exception as exc:
            # A protocol error in what the server sent: stop reading this stream.
            self.failure = exc
            self._abort()

    def finish(self) -> None:
        pass

    def on_connection_close(self) -> None:
        pass
