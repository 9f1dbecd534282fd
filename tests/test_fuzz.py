"""Property-based tests: no bad input, anywhere, gets past a clear 4xx or changes anything.

Every REST body, query parameter, path id and header the contract names, and
every WebSocket frame, is fuzzed with hypothesis against the real in-process
server. For each bad input the answer must be a 4xx with a JSON body
`{"error", "code"}` whose code is one the contract allows for that input (a
`nack` with such a code for a WebSocket frame, and the socket stays open), the
server must still answer afterwards, and its state (sessions and their seq,
connections and their frame counters, streams, watchers, drivers, sockets, agent
runs) must be exactly what it was.

How hypothesis runs against a server that lives in the test's own event loop:
pytest-jupyter starts the server on `jp_asyncio_loop` and runs *async* tests
with `loop.run_until_complete`. These tests are plain *sync* functions instead;
they call a `@given` function defined inside the test, and each example drives
its requests with `loop.run_until_complete(...)`. While an example runs, the
loop runs the server and the client; between examples it is idle, and nothing
on it needs time (the server runs on a fake clock and the agent answers without
delay). Hypothesis keeps full control of generation and shrinking, fixtures are
set up once per test (the `@given` function takes no fixtures, so no health
check is involved), and no example sleeps.

What counts as bad is decided by an oracle written from PROTOCOL.md (plus
`json.loads` as the definition of JSON); the oracle returns every (status,
code) the contract allows, so the tests do not depend on which check the
server happens to make first.
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.parse
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from jupyter_chatbridge.server.bridge import ChatBridge

from .support import WAIT, StreamFactory, eventually, new_cid

EXAMPLES = 200  # per property (half for the per-endpoint ones); the module takes ~20 s

BAD = (400, "bad_request")
SESSION_UNKNOWN = (404, "session_unknown")
CONNECTION_UNKNOWN = (404, "connection_unknown")
SESSION_EXISTS = (409, "session_exists")
TOO_LARGE = (413, "too_large")
FORBIDDEN = (403, "forbidden")

MAX_MESSAGE_BYTES = 65536  # the server's default max_message_bytes
UNPARSED_BODY_LIMIT = 6 * MAX_MESSAGE_BYTES + 4096  # send refuses bigger bodies unread
KNOWN_SESSIONS = ("s1", "s2")
ACTIONS = ("watch", "unwatch", "attach", "detach", "suspend")
BODY_ENDPOINTS = ("sessions", *ACTIONS, "send")

# The contract's identifiers, written from PROTOCOL.md, matched in full.
SESSION_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
CLIENT_MSG_ID_RE = re.compile(r"[\x21-\x7e]{1,128}")
CID_RE = re.compile(r"cid-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)
WIRE_INT_RE = re.compile(r"[0-9]{1,18}")


def fuzz(max_examples: int = EXAMPLES) -> Callable[[Any], Any]:
    return settings(
        max_examples=max_examples,
        deadline=None,
        database=None,  # no .hypothesis/ in the work tree; failures print a reproduce blob
        print_blob=True,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.large_base_example,
        ],
    )


# -- the oracle -----------------------------------------------------------------------------


def is_session_id(value: object) -> bool:
    return isinstance(value, str) and SESSION_ID_RE.fullmatch(value) is not None


def is_client_msg_id(value: object) -> bool:
    return isinstance(value, str) and CLIENT_MSG_ID_RE.fullmatch(value) is not None


def is_wire_int(value: str) -> bool:
    return WIRE_INT_RE.fullmatch(value) is not None


def is_seq(value: object) -> bool:
    return type(value) is int and value >= 0


def utf8_size(text: str) -> int | None:
    """UTF-8 length, or None for text that is not Unicode (a lone surrogate)."""
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return None


def parse(raw: bytes) -> Any:
    """The JSON object of a body or frame, or None when there is none."""
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def session_ref_errors(value: object) -> set[tuple[int, str]]:
    if not is_session_id(value):
        return {BAD}
    return set() if value in KNOWN_SESSIONS else {SESSION_UNKNOWN}


def text_errors(text: object) -> set[tuple[int, str]]:
    if not isinstance(text, str) or not text:
        return {BAD}
    size = utf8_size(text)
    if size is None:
        return {BAD}
    return {TOO_LARGE} if size > MAX_MESSAGE_BYTES else set()


def expected_for_body(endpoint: str, raw: bytes) -> set[tuple[int, str]]:
    """Every answer the contract allows for this body (empty: the body is valid)."""
    errors: set[tuple[int, str]] = set()
    if endpoint == "send" and len(raw) > UNPARSED_BODY_LIMIT:
        errors.add(TOO_LARGE)
    if endpoint == "sessions" and raw == b"":
        return errors  # no body: create a session with a generated id
    body = parse(raw)
    if body is None:
        return errors | {BAD}
    if endpoint == "sessions":
        sid = body.get("sessionId")
        if sid is None:
            return errors
        if not is_session_id(sid):
            return errors | {BAD}
        return errors | ({SESSION_EXISTS} if sid in KNOWN_SESSIONS else set())
    errors |= session_ref_errors(body.get("sessionId"))
    if endpoint == "watch":
        after_seq = body.get("afterSeq")
        if after_seq is not None and not is_seq(after_seq):
            errors.add(BAD)
    if endpoint == "send":
        if not is_client_msg_id(body.get("clientMsgId")):
            errors.add(BAD)
        errors |= text_errors(body.get("text"))
    return errors


def expected_nack(raw: str | bytes) -> tuple[str | None, set[str]]:
    """The clientMsgId a nack must echo and the codes it may carry (empty: a valid send)."""
    frame = parse(raw.encode("utf-8") if isinstance(raw, str) else raw)
    if frame is None:
        return None, {"bad_request"}
    echo = frame.get("clientMsgId") if is_client_msg_id(frame.get("clientMsgId")) else None
    if frame.get("type") != "send" or echo is None:
        return echo, {"bad_request"}
    return echo, {code for _, code in text_errors(frame.get("text"))}


# -- inputs ---------------------------------------------------------------------------------

# NUL and other controls, bidi overrides and marks, zero-width and BOM, emoji with
# ZWJ and skin tone, combining marks, non-BMP and non-characters, line and
# paragraph separators, NEL, non-ASCII digits, whitespace, lone surrogates.
ODD_CHARS = [
    "\x00", "\x01", "\x1b", "\x7f", "\x85", "\u202e", "\u200f", "\u2066", "\u061c",
    "\u200b", "\u200d", "\ufeff", "\U0001f600", "\U0001f469\u200d\U0001f4bb",
    "\U0001f44d\U0001f3fd",
    "e\u0301", "\u0338", "\uffff", "\ufffe", "\U0010ffff", "\u2028", "\u2029", "\u0661\u0662",
    "\u00b2", "\uff11", "\u00a0", "\u3000", "\n", "\r\n", "\t", " ", "\ud800", "\udfff",
    "\udbff\udc00"[0], "é", "ß", "İ", "\u212a",
]  # fmt: skip

odd_text = st.lists(st.sampled_from(ODD_CHARS) | st.text(max_size=3), max_size=8).map("".join)
any_text = st.one_of(st.text(max_size=20), odd_text)
huge_text = st.builds(
    lambda char, size: char * size,
    st.sampled_from(["x", "é", "\U0001f600", "\u202e", "\x00"]),
    st.sampled_from([MAX_MESSAGE_BYTES // 4 + 1, MAX_MESSAGE_BYTES + 1, 300_000]),
)
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), any_text, st.integers(-(10**40), 10**40)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text, inner, max_size=3),
    max_leaves=6,
)


def dumps_fragment(value: Any, ascii_only: bool) -> str:
    # ensure_ascii writes lone surrogates as \ud800 escapes; without it they stay raw
    # and reach the server as the bytes UTF-8 would give them (surrogatepass below).
    return json.dumps(value, ensure_ascii=ascii_only)


def deep(depth: int, kind: str) -> str:
    if kind == "list":
        return "[" * depth + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


# Either clearly within or clearly beyond any JSON parser's nesting limit (CPython's
# follows the recursion limit, which hypothesis raises while it runs a test): in between,
# whether a value parses depends on the stack (see the test for that zone below).
deep_fragment = st.builds(
    deep, st.integers(2, 50) | st.integers(100_000, 200_000), st.sampled_from(["list", "dict"])
)
value_fragment = st.one_of(
    st.builds(dumps_fragment, json_values, st.booleans()),
    st.builds(dumps_fragment, odd_text, st.booleans()),
    st.builds(dumps_fragment, huge_text, st.booleans()),
    deep_fragment,
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-0", "1.0", "9" * 5000]),
)


def encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def object_text(fields: dict[str, str]) -> str:
    return "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in fields.items()) + "}"


def body_fields(endpoint: str) -> st.SearchStrategy[bytes]:
    """A JSON object for `endpoint`: each field valid, absent, or anything at all."""
    good: dict[str, list[Any]] = {
        "sessionId": ["s1", "s2", "ghost-session"],
        "afterSeq": [None, 0, 3, 10**30],
        "clientMsgId": ["fresh-id", "m-hello", "~!x"],
        "text": ["hi", "\u202eabc\U0001f600", "\x00"],
    }
    names = {
        "sessions": ["sessionId"],
        "watch": ["sessionId", "afterSeq"],
        "send": ["sessionId", "clientMsgId", "text"],
    }.get(endpoint, ["sessionId"])

    def field(name: str) -> st.SearchStrategy[str | None]:
        fixed = st.sampled_from(good[name]).map(json.dumps)
        return st.one_of(st.none(), fixed, fixed, value_fragment)

    extra = st.dictionaries(
        any_text, st.builds(dumps_fragment, json_values, st.just(True)), max_size=2
    )

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        fields = {k: v for k, v in draw(extra).items() if k not in names}
        for name in names:
            fragment = draw(field(name))
            if fragment is not None:
                fields[name] = fragment
        return encode(object_text(fields))

    return build()


def not_an_object(raw: bytes) -> bool:
    return raw != b"" and parse(raw) is None


malformed_bodies = st.one_of(
    st.binary(max_size=80),
    any_text.map(encode),
    st.builds(dumps_fragment, json_values, st.booleans()).map(encode),
    deep_fragment.map(encode),
    st.sampled_from(
        [
            b"{",
            b"}",
            b"[]",
            b"null",
            b"1",
            b'"s1"',
            b"{'sessionId': 's1'}",
            b'{"sessionId": "s1",}',
            b'{"sessionId": "s1"} trailing',
            b"\xff\xfe{\x00}\x00",
            b"\xef\xbb\xbf",
            b"\xed\xa0\x80",
            b" \n\t",
            b'{"sessionId": "s1"',
        ]
    ),
    st.sampled_from([b"x" * 2_000_000, b"{" * 500_000, b'{"a":"' + b"\xff" * 100_000 + b'"}']),
).filter(not_an_object)

# Text that needs encoding in a URL, as the bytes sent: percent-encoded UTF-8, or not
# UTF-8 at all (invalid bytes, encoded surrogates).
url_values = st.one_of(
    any_text.map(encode),
    st.binary(min_size=1, max_size=12),
    st.sampled_from(
        [b"-1", b"+1", b"1.0", b"1e3", b" 1", b"0x10", b"9" * 19, b"9" * 400, b"", b"\xb2"]
    ),
    st.sampled_from(["\u0661\u0662", "\u00b2", "\uff11", "\u2167"]).map(encode),
)

# Values an HTTP header field can carry (visible ASCII, space, tab, obs-text).
header_values = st.one_of(
    st.text(
        st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
        max_size=40,
    ),
    st.sampled_from(["", "-1", "1 2", "\u00b2", "\u00bd", "9" * 19, "0x1", "null", "token", "\t"]),
    st.builds(lambda: new_cid().upper()),
    st.builds(lambda: "conn-" + new_cid()[4:].replace("-", "")),
)


def quote(raw: bytes) -> str:
    return urllib.parse.quote(raw, safe="")


def decoded(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def query_value(raw: bytes) -> str | None:
    """A query parameter as every Jupyter handler reads it (tornado's get_argument turns
    control characters into spaces and strips surrounding whitespace); None: not UTF-8.

    That leniency is the framework's and harmless (ids are stored canonical), so the
    oracle judges what the handler sees; a value bad even after it is bad raw too.
    """
    text = decoded(raw)
    return None if text is None else re.sub(r"[\x00-\x08\x0e-\x1f]", " ", text).strip()


# -- the server and its state ---------------------------------------------------------------


@dataclass
class Reply:
    status: int
    body: Any
    content_type: str
    headers: Any


class Http:
    """Requests with exactly the bytes given: raw path, query, body and headers."""

    def __init__(self, client: Any, base_url: str, token: str) -> None:
        self._client = client
        self._prefix = base_url + "chatbridge/api/"
        self.token = token

    async def __call__(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        auth: bool = True,
        timeout: float = WAIT,
    ) -> Reply:
        all_headers = {"Authorization": f"token {self.token}"} if auth else {}
        all_headers.update(headers or {})
        if body is None and method == "POST":
            body = b""
        response = await self._client.fetch(
            self._prefix + path,
            method=method,
            body=body,
            headers=all_headers,
            raise_error=False,
            allow_nonstandard_methods=True,
            request_timeout=timeout,
        )
        text = response.body.decode("utf-8") if response.body else ""
        return Reply(
            response.code,
            json.loads(text) if text else None,
            response.headers.get("Content-Type", ""),
            response.headers,
        )


def snapshot(bridge: ChatBridge) -> dict[str, Any]:
    """Everything a request could change, in comparable form."""
    sessions = {
        s.id: {
            "lastSeq": s.log.last_seq,
            "watchers": sorted(s.watchers),
            "driver": s.driver,
            "suspended": s.suspended,
            "running": s.running,
            "pending": len(s.pending),
        }
        for s in bridge.sessions
    }
    connections = {
        c.id: {
            "owner": c.owner,
            "stable": c.stable,
            "active": c.active,
            "lastFrameId": c.last_frame_id,
            "buffered": len(c.replay),
            "stream": id(bridge.streams.get(c.id)),
            "watches": sorted(bridge.sessions.watched_by(c.id)),
            "drives": sorted(bridge.sessions.driven_by(c.id)),
        }
        for c in bridge.connections
    }
    return {
        "epoch": bridge.epoch,
        "sessions": sessions,
        "connections": connections,
        "streams": len(bridge.streams),
        "sockets": {sid: len(s) for sid, s in bridge.fanout.sockets.items()},
        "runners": sorted(bridge.runner.runs),
    }


@dataclass
class World:
    """A server with some state to protect, and how to reach it."""

    run: Callable[[Coroutine[Any, Any, Any]], Any]
    http: Http
    bridge: ChatBridge
    cid: str
    conn_id: str
    ws: Any
    ws_url: str
    origin: str
    before: dict[str, Any]

    def check_unchanged(self) -> None:
        assert snapshot(self.bridge) == self.before

    async def healthy(self) -> None:
        reply = await self.http("GET", "sessions")
        assert reply.status == 200
        assert sorted(s["sessionId"] for s in reply.body["sessions"]) == list(KNOWN_SESSIONS)


def assert_error(reply: Reply, allowed: set[tuple[int, str]]) -> None:
    assert allowed, "the oracle found the input valid; the generator must not produce it"
    assert (reply.status, (reply.body or {}).get("code")) in allowed, (reply.status, reply.body)
    assert reply.content_type.startswith("application/json"), reply.content_type
    assert set(reply.body) == {"error", "code"} and isinstance(reply.body["error"], str)
    assert reply.body["error"]


@pytest.fixture
def world(
    jp_asyncio_loop: asyncio.AbstractEventLoop,
    http_server_client: Any,
    jp_base_url: str,
    jp_http_port: int,
    jp_serverapp: Any,
    bridge: ChatBridge,
    streams: StreamFactory,
) -> Any:
    """s1 (with history, watched and driven by a cid connection, one WebSocket), s2
    (watched by a server-assigned connection)."""
    token = jp_serverapp.identity_provider.token
    http = Http(http_server_client, jp_base_url, token)
    ws_url = f"ws://127.0.0.1:{jp_http_port}{jp_base_url}chatbridge/api/sessions/"
    cid = new_cid()

    async def build() -> tuple[str, Any]:
        for sid in KNOWN_SESSIONS:
            assert (
                await http("POST", "sessions", body=json.dumps({"sessionId": sid}).encode())
            ).status == 201
        stream = await streams.open(cid)
        other = await streams.open()
        for action, sid, who in (("watch", "s1", cid), ("attach", "s1", cid)):
            body = json.dumps({"sessionId": sid}).encode()
            assert (
                await http("POST", action, body=body, headers={"X-Connection-ID": who})
            ).status == 200
        conn_id = other.welcome["connectionId"]
        body = json.dumps({"sessionId": "s2"}).encode()
        assert (
            await http("POST", "watch", body=body, headers={"X-Connection-ID": conn_id})
        ).status == 200
        body = json.dumps(
            {"sessionId": "s1", "clientMsgId": "m-hello", "text": "hello there"}
        ).encode()
        assert (await http("POST", "send", body=body)).status == 202
        await stream.wait_for(lambda s: any(f.event == "message_end" for f in s.frames))
        await eventually(lambda: not bridge.runner.runs)
        request = HTTPRequest(ws_url + "s1/ws", headers={"Authorization": f"token {token}"})
        ws = await websocket_connect(request)
        await eventually(lambda: len(bridge.fanout.sockets.get("s1", ())) == 1)
        return conn_id, ws

    conn_id, ws = jp_asyncio_loop.run_until_complete(build())
    yield World(
        run=jp_asyncio_loop.run_until_complete,
        http=http,
        bridge=bridge,
        cid=cid,
        conn_id=conn_id,
        ws=ws,
        ws_url=ws_url,
        origin=f"http://127.0.0.1:{jp_http_port}",
        before=snapshot(bridge),
    )
    ws.close()


# -- REST bodies ----------------------------------------------------------------------------


def test_malformed_bodies_are_400_everywhere(world: World) -> None:
    @fuzz()
    @given(endpoint=st.sampled_from(BODY_ENDPOINTS), raw=malformed_bodies)
    def check(endpoint: str, raw: bytes) -> None:
        async def one() -> None:
            headers = {"X-Connection-ID": world.cid}
            reply = await world.http("POST", endpoint, body=raw, headers=headers)
            assert_error(reply, expected_for_body(endpoint, raw))
            world.check_unchanged()
            await world.healthy()

        world.run(one())

    check()


@pytest.mark.parametrize("endpoint", BODY_ENDPOINTS)
def test_bad_fields_get_the_contract_code(world: World, endpoint: str) -> None:
    bodies = body_fields(endpoint).filter(lambda raw: bool(expected_for_body(endpoint, raw)))

    @fuzz(max_examples=EXAMPLES // 2)
    @given(raw=bodies, header=st.sampled_from([world.cid, world.conn_id, "junk"]))
    def check(raw: bytes, header: str) -> None:
        async def one() -> None:
            # Connection-scoped calls act for a known connection, so only the body is wrong;
            # send ignores the header, whatever it says.
            headers = {"X-Connection-ID": header if endpoint == "send" else world.cid}
            reply = await world.http("POST", endpoint, body=raw, headers=headers)
            assert_error(reply, expected_for_body(endpoint, raw))
            world.check_unchanged()
            await world.healthy()

        world.run(one())

    check()


# -- query parameters and path ids ----------------------------------------------------------


def wire_int_ok(raw: bytes | None, *, low: int = 0, high: int | None = None) -> bool:
    if raw is None:
        return True
    text = query_value(raw)
    if text is None or not is_wire_int(text):
        return False
    return low <= int(text) and (high is None or int(text) <= high)


def test_bad_history_parameters_are_400(world: World) -> None:
    maybe = st.none() | url_values

    @fuzz()
    @given(after=maybe, limit=maybe)
    def check(after: bytes | None, limit: bytes | None) -> None:
        if wire_int_ok(after) and wire_int_ok(limit, low=1, high=10000):
            return  # a valid request; nothing to check here
        query = [
            f"{k}={quote(v)}" for k, v in (("after", after), ("limit", limit)) if v is not None
        ]

        async def one() -> None:
            reply = await world.http("GET", "sessions/s1/events?" + "&".join(query))
            assert_error(reply, {BAD})
            world.check_unchanged()
            await world.healthy()

        world.run(one())

    check()


def last_event_id_ok(raw: bytes | None) -> bool:
    if raw is None:
        return True
    text = query_value(raw)
    return text is not None and (text == "" or is_wire_int(text))  # empty: none


def test_bad_stream_parameters_are_400_not_a_stream(world: World) -> None:
    cids = st.one_of(
        st.none(),
        st.builds(lambda: new_cid().encode()),
        url_values,
        st.builds(lambda: (new_cid() + "\n").encode()),
        st.builds(lambda: (" " + new_cid()).encode()),
        st.builds(lambda: new_cid()[:-1].encode() + "\uff41".encode()),
    )
    last_ids = st.one_of(
        st.none(),
        st.tuples(st.just("query"), url_values),
        st.tuples(st.just("header"), header_values.map(lambda v: v.encode("latin-1"))),
    )

    @fuzz()
    @given(cid=cids, last=last_ids)
    def check(cid: bytes | None, last: tuple[str, bytes] | None) -> None:
        cid_text = query_value(cid) if cid is not None else None
        cid_ok = cid is None or (cid_text is not None and CID_RE.fullmatch(cid_text) is not None)
        where, value = last if last is not None else ("query", None)
        if where == "header":
            # Header bytes are read as latin-1, without surrounding spaces and tabs (HTTP);
            # empty is none, and only ASCII digits make a number.
            text = value.decode("latin-1").strip(" \t") if value is not None else None
            last_ok = not text or is_wire_int(text)
        else:
            text = query_value(value) if value is not None else None
            last_ok = last_event_id_ok(value)
        if text is not None and not last_ok and is_wire_int(text.strip()):
            return  # padded with other whitespace: the contract does not say; either is fine
        if cid_ok and last_ok:
            return  # this would open a stream
        query = [] if cid is None else [f"cid={quote(cid)}"]
        headers = {}
        if value is not None and where == "query":
            query.append(f"lastEventId={quote(value)}")
        elif value is not None:
            headers["Last-Event-ID"] = value.decode("latin-1")

        async def one() -> None:
            # A stream that opens by mistake never ends: fail fast (answers take milliseconds).
            path = "events?" + "&".join(query)
            reply = await world.http("GET", path, headers=headers, timeout=2)
            assert_error(reply, {BAD})
            world.check_unchanged()
            await world.healthy()

        world.run(one())

    check()


def test_bad_path_ids_are_400_or_404(world: World) -> None:
    ids = st.one_of(
        url_values, st.sampled_from([b".", b"..", b"s1/x", b"s1 ", b"s1\n", b"-s1", b"S1"])
    )

    @fuzz()
    @given(
        raw=ids.filter(bool),
        target=st.sampled_from(["get", "delete", "events", "ws", "ws-browser"]),
    )
    def check(raw: bytes, target: str) -> None:
        text = decoded(raw)
        if text in KNOWN_SESSIONS:
            return
        expected = {SESSION_UNKNOWN} if is_session_id(text) else {BAD}
        path = "sessions/" + quote(raw)

        async def one() -> None:
            if target.startswith("ws"):
                await check_ws_refused(
                    world, quote(raw), browser=target == "ws-browser", expected=expected
                )
            else:
                method = "DELETE" if target == "delete" else "GET"
                reply = await world.http(method, path + ("/events" if target == "events" else ""))
                assert_error(reply, expected)
            world.check_unchanged()
            await world.healthy()

        world.run(one())

    check()


async def check_ws_refused(
    world: World, path_id: str, *, browser: bool, expected: set[tuple[int, str]], query: str = ""
) -> None:
    headers = {"Authorization": f"token {world.http.token}"}
    if browser:
        headers["Origin"] = world.origin
    request = HTTPRequest(world.ws_url + path_id + "/ws" + query, headers=headers)
    if browser and expected == {SESSION_UNKNOWN}:
        # A browser cannot read an HTTP status: upgraded, then closed with 4404.
        ws = await websocket_connect(request)
        assert await asyncio.wait_for(ws.read_message(), WAIT) is None
        assert (ws.close_code, ws.close_reason) == (4404, "session unknown")
        ws.close()
        return
    with pytest.raises(HTTPClientError) as info:
        await websocket_connect(request)
    body = json.loads(info.value.response.body)
    assert_error(
        Reply(info.value.code, body, info.value.response.headers.get("Content-Type", ""), None),
        expected,
    )


def test_bad_socket_after_seq_is_http_400(world: World) -> None:
    @fuzz(max_examples=EXAMPLES // 2)
    @given(value=url_values, browser=st.booleans())
    def check(value: bytes, browser: bool) -> None:
        if wire_int_ok(value):
            return

        async def one() -> None:
            query = f"?afterSeq={quote(value)}"
            await check_ws_refused(world, "s1", browser=browser, expected={BAD}, query=query)
            world.check_unchanged()
            await world.healthy()

        world.run(one())

    check()


# -- headers --------------------------------------------------------------------------------


def test_unknown_connection_header_is_404_and_changes_nothing(world: World) -> None:
    known = {world.cid, world.conn_id}

    @fuzz()
    @given(
        action=st.sampled_from(ACTIONS),
        sid=st.sampled_from(KNOWN_SESSIONS),
        header=st.none() | header_values,
        query=st.none() | url_values,
    )
    def check(action: str, sid: str, header: str | None, query: bytes | None) -> None:
        if header is not None and header.strip(" \t").lower() in known:
            return
        # Without the header, suspend reads the connectionId query parameter.
        via_query = action == "suspend" and not (header or "").strip(" \t")
        if via_query and query is not None:
            text = query_value(query)
            if text is None:
                expected = {BAD}
            elif text.lower() in known:
                return
            else:
                expected = {CONNECTION_UNKNOWN}
        else:
            expected = {CONNECTION_UNKNOWN}
        path = action + (f"?connectionId={quote(query)}" if query is not None else "")
        headers = {} if header is None else {"X-Connection-ID": header}

        async def one() -> None:
            body = json.dumps({"sessionId": sid}).encode()
            reply = await world.http("POST", path, body=body, headers=headers)
            assert_error(reply, expected)
            world.check_unchanged()
            await world.healthy()

        world.run(one())

    check()


# Valid, state-changing requests: only the credentials are wrong.
AUTH_TARGETS = [
    ("GET", "sessions", None),
    ("POST", "sessions", {"sessionId": "new"}),
    ("GET", "sessions/s1", None),
    ("DELETE", "sessions/s1", None),
    ("GET", "sessions/s1/events", None),
    ("POST", "watch", {"sessionId": "s2"}),
    ("POST", "unwatch", {"sessionId": "s1"}),
    ("POST", "attach", {"sessionId": "s2"}),
    ("POST", "detach", {"sessionId": "s1"}),
    ("POST", "suspend", {"sessionId": "s1"}),
    ("POST", "send", {"sessionId": "s1", "clientMsgId": "new", "text": "x"}),
    ("GET", "events", None),
    ("GET", "openapi.yaml", None),
]


def test_bad_credentials_are_403_everywhere(world: World) -> None:
    @fuzz()
    @given(target=st.sampled_from(AUTH_TARGETS), auth=st.none() | header_values)
    def check(target: tuple[str, str, Any], auth: str | None) -> None:
        method, path, body = target
        headers = {"X-Connection-ID": world.cid}
        if auth is not None:
            headers["Authorization"] = auth
        if world.http.token in (auth or ""):
            return

        async def one() -> None:
            raw = json.dumps(body).encode() if body is not None else None
            reply = await world.http(method, path, body=raw, headers=headers, auth=False)
            assert_error(reply, {FORBIDDEN})
            world.check_unchanged()
            await world.healthy()

        world.run(one())

    check()


# -- WebSocket frames -----------------------------------------------------------------------


def send_frame(draw: st.DrawFn) -> str:
    """A `send`-like frame with at least one field wrong (checked by the oracle)."""
    fields: dict[str, str] = {}
    for name, good in (("type", "send"), ("clientMsgId", "ws-new"), ("text", "hello")):
        choice = draw(st.sampled_from(["good", "good", "absent", "any"]))
        if choice == "good":
            fields[name] = json.dumps(good)
        elif choice == "any":
            fields[name] = draw(value_fragment)
    return object_text(fields)


frames = st.one_of(
    st.tuples(st.composite(send_frame)(), st.just("text")),
    st.tuples(st.composite(send_frame)(), st.just("binary")),
    st.tuples(any_text.filter(lambda t: utf8_size(t) is not None), st.just("text")),
    st.tuples(st.binary(max_size=60), st.just("binary")),
    st.tuples(deep_fragment, st.sampled_from(["text", "binary"])),
    st.tuples(st.builds(dumps_fragment, json_values, st.just(True)), st.just("text")),
)


def test_bad_websocket_frames_are_nacked_and_the_socket_stays_open(world: World) -> None:
    @fuzz()
    @given(frame=frames)
    def check(frame: tuple[str | bytes, str]) -> None:
        payload, kind = frame
        data = encode(payload) if isinstance(payload, str) and kind == "binary" else payload
        if isinstance(data, str) and utf8_size(data) is None:
            data = encode(data)  # a text frame must be UTF-8: send it as binary
        echo, codes = expected_nack(data)
        if not codes:
            return  # a valid send

        async def one() -> None:
            await world.ws.write_message(data, binary=isinstance(data, bytes))
            message = await asyncio.wait_for(world.ws.read_message(), WAIT)
            assert message is not None, (world.ws.close_code, world.ws.close_reason)
            nack = json.loads(message)
            assert set(nack) == {"type", "clientMsgId", "error", "code"}, nack
            assert nack["type"] == "nack" and nack["clientMsgId"] == echo, nack
            assert nack["code"] in codes and isinstance(nack["error"], str) and nack["error"]
            assert world.ws.close_code is None
            world.check_unchanged()
            await world.healthy()

        world.run(one())

    check()


def test_nesting_near_the_parser_limit_is_never_a_5xx(world: World) -> None:
    """Around the nesting limit a value may or may not parse; both answers must be errors."""
    targets = {
        "sessions-settings": ('{"sessionId":"s1","settings":%s}', {BAD, SESSION_EXISTS}),
        "sessions-extra": ('{"sessionId":"s1","x":%s}', {BAD, SESSION_EXISTS}),
        "watch": ('{"sessionId":"s1","afterSeq":%s}', {BAD}),
        "send": ('{"sessionId":"s1","clientMsgId":"m-deep","text":%s}', {BAD}),
        "ws": ('{"type":"send","clientMsgId":"m-deep","text":%s}', {BAD}),
    }

    @fuzz(max_examples=EXAMPLES // 2)
    @given(
        target=st.sampled_from(sorted(targets)),
        depth=st.integers(100, 20_000),
        kind=st.sampled_from(["list", "dict"]),
    )
    def check(target: str, depth: int, kind: str) -> None:
        template, expected = targets[target]
        raw = template % deep(depth, kind)

        async def one() -> None:
            if target == "ws":
                await world.ws.write_message(raw)
                nack = json.loads(await asyncio.wait_for(world.ws.read_message(), WAIT))
                assert (nack["type"], nack["code"]) == ("nack", "bad_request"), nack
            else:
                endpoint = target.split("-")[0]
                headers = {"X-Connection-ID": world.cid}
                reply = await world.http("POST", endpoint, body=raw.encode(), headers=headers)
                assert_error(reply, expected)
            world.check_unchanged()
            await world.healthy()

        world.run(one())

    check()


# -- regressions: the bugs these properties found, pinned as plain examples -----------------


@pytest.mark.parametrize("endpoint", BODY_ENDPOINTS)
@pytest.mark.parametrize("kind", ["list", "dict"])
async def test_regression_deeply_nested_body_is_400_not_500(
    api: Any, streams: StreamFactory, bridge: ChatBridge, endpoint: str, kind: str
) -> None:
    # json.loads raised RecursionError, which the handler did not catch: a 500.
    cid = new_cid()
    await streams.open(cid)
    status, body = await api(
        "POST", endpoint, raw_body=deep(5000, kind), headers={"X-Connection-ID": cid}
    )
    assert (status, body["code"]) == BAD
    assert len(bridge.sessions) == 0


async def test_regression_deeply_nested_frame_is_nacked_and_the_socket_stays_open(
    api: Any, jp_ws_fetch: Any
) -> None:
    # The same RecursionError in on_message made tornado abort the socket.
    await api.ok("POST", "sessions", body={"sessionId": "s1"})
    ws = await jp_ws_fetch("chatbridge", "api", "sessions", "s1", "ws")
    for frame in (deep(100_000, "list"), '{"type":"send","text":' + deep(5000, "dict") + "}"):
        ws.write_message(frame)
        nack = json.loads(await asyncio.wait_for(ws.read_message(), WAIT))
        assert (nack["type"], nack["clientMsgId"], nack["code"]) == ("nack", None, "bad_request")
    ws.close()


async def test_regression_lone_surrogate_text_is_400_not_500(
    api: Any, jp_ws_fetch: Any, bridge: ChatBridge
) -> None:
    # "\ud800" is valid JSON but not Unicode text: encoding it for the size check raised
    # UnicodeEncodeError (REST: a 500; WebSocket: the socket aborted).
    await api.ok("POST", "sessions", body={"sessionId": "s1"})
    escaped = '{"sessionId":"s1","clientMsgId":"m1","text":"a\\ud800b"}'
    raw_bytes = b'{"sessionId":"s1","clientMsgId":"m1","text":"a\xed\xa0\x80b"}'
    for raw in (escaped, raw_bytes):
        status, body = await api("POST", "send", raw_body=raw)
        assert (status, body["code"]) == BAD
    ws = await jp_ws_fetch("chatbridge", "api", "sessions", "s1", "ws")
    ws.write_message('{"type":"send","clientMsgId":"m2","text":"\\udfff"}')
    nack = json.loads(await asyncio.wait_for(ws.read_message(), WAIT))
    assert (nack["type"], nack["clientMsgId"], nack["code"]) == ("nack", "m2", "bad_request")
    ws.write_message(b'{"type":"send","clientMsgId":"m3","text":"\xed\xa0\x80"}', binary=True)
    nack = json.loads(await asyncio.wait_for(ws.read_message(), WAIT))
    assert (nack["type"], nack["clientMsgId"], nack["code"]) == ("nack", "m3", "bad_request")
    ws.close()
    assert bridge.sessions.get("s1").log.last_seq == 0


@pytest.mark.parametrize("value", ["\u00b2", "\u0661\u0662", "\uff11", "\u2167"])
async def test_regression_non_ascii_digits_are_400(
    api: Any, jp_ws_fetch: Any, bridge: ChatBridge, value: str
) -> None:
    # str.isdigit() accepted them: '²' then crashed int() (a 500), '١٢' was read as 12.
    await api.ok("POST", "sessions", body={"sessionId": "s1"})
    for params in ({"after": value}, {"limit": value}):
        status, body = await api("GET", "sessions", "s1", "events", params=params)
        assert (status, body["code"]) == BAD, params
    status, body = await api("GET", "events", params={"lastEventId": value})
    assert (status, body["code"]) == BAD
    if value == "\u00b2":  # a header carries latin-1 only
        status, body = await api("GET", "events", headers={"Last-Event-ID": value})
        assert (status, body["code"]) == BAD
    with pytest.raises(HTTPClientError) as info:
        await jp_ws_fetch("chatbridge", "api", "sessions", "s1", "ws", params={"afterSeq": value})
    assert info.value.code == 400
    assert len(bridge.connections) == 0


async def test_regression_a_trailing_newline_does_not_make_an_id_valid(
    api: Any, bridge: ChatBridge
) -> None:
    # The id patterns used re.match with `$`, which also matches before a final "\n".
    from jupyter_chatbridge.protocol import is_valid_client_msg_id, normalize_cid

    assert normalize_cid(new_cid() + "\n") is None
    assert not is_valid_client_msg_id("m1\n")
    status, body = await api("POST", "sessions", body={"sessionId": "s1\n"})
    assert (status, body["code"]) == BAD
    await api.ok("POST", "sessions", body={"sessionId": "s1"})
    status, body = await api("GET", "sessions", "s1\n")
    assert (status, body["code"]) == BAD
    send = {"sessionId": "s1", "clientMsgId": "m1\n", "text": "x"}
    status, body = await api("POST", "send", body=send)
    assert (status, body["code"]) == BAD
    assert [s.id for s in bridge.sessions] == ["s1"]
    assert bridge.sessions.get("s1").log.last_seq == 0


async def test_regression_a_cid_names_its_connection_in_any_case(
    api: Any, streams: StreamFactory, bridge: ChatBridge
) -> None:
    # A cid is case-insensitive and held in lower case, but X-Connection-ID and suspend's
    # connectionId were looked up as sent: an upper-case cid got 404 connection_unknown.
    await api.ok("POST", "sessions", body={"sessionId": "s1"})
    cid = new_cid()
    await streams.open(cid.upper())
    headers = {"X-Connection-ID": cid.upper()}
    await api.ok("POST", "attach", body={"sessionId": "s1"}, headers=headers)
    assert bridge.sessions.get("s1").driver == cid
    await api.ok("POST", "suspend", body={"sessionId": "s1"}, params={"connectionId": cid.upper()})
    assert bridge.sessions.get("s1").suspended
    await api.ok(
        "POST", "send", body={"sessionId": "s1", "clientMsgId": "m1", "text": "x"}, headers=headers
    )
    history = await api.ok("GET", "sessions", "s1", "events")
    assert history["events"][0]["connectionId"] == cid


async def test_regression_a_malformed_last_event_id_query_is_400_even_with_the_header(
    api: Any, bridge: ChatBridge
) -> None:
    # With a Last-Event-ID header, a garbage lastEventId query parameter was ignored.
    status, body = await api(
        "GET", "events", params={"lastEventId": "x"}, headers={"Last-Event-ID": "3"}
    )
    assert (status, body["code"]) == BAD
    assert len(bridge.connections) == 0
