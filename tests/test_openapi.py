"""The shipped OpenAPI description (jupyter_chatbridge/server/openapi.yaml) against the server.

Schemathesis generates requests for every operation, valid (positive) and
invalid (negative) ones, from the document; each is sent to the real
in-process server and its answer is checked against the document: no 5xx,
a documented status, a documented content type, a body that matches the
schema, documented headers, and a 4xx for every invalid request.

How schemathesis runs against a server that lives in the test's own event loop:
its own runners send requests with a blocking client, which would block the
very loop the server needs. So the tests are plain *sync* functions (pytest-jupyter
calls those directly) that use only schemathesis's generation and checks: a
`@given` function draws `operation.as_strategy(...)` cases, sends each with
`loop.run_until_complete(...)` on tornado's async client (the loop runs the
server while the request is in flight), wraps the answer as a
`schemathesis.Response` and calls `case.validate_response` with the checks
listed below. No check that re-sends a request is used, so nothing blocks.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

import jupyter_chatbridge
from jupyter_chatbridge.server.bridge import ChatBridge

from .support import WAIT, StreamFactory, new_cid

SPEC_PATH = Path(jupyter_chatbridge.__file__).parent / "server" / "openapi.yaml"
EXAMPLES = 50  # per operation; all 15 operations take about 15 s

SCHEMA = schemathesis.openapi.from_path(SPEC_PATH)
# Authentication is added to every request below; don't generate token parameters.
SCHEMA.config.generation.update(with_security_parameters=False, allow_extra_parameters=False)
OPERATIONS = {result.ok().label: result.ok() for result in SCHEMA.get_all_operations()}

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
]

# The state positive cases are steered to, so they reach the 2xx answers too.
DEMO = "demo"


def test_every_rest_path_of_the_protocol_is_described() -> None:
    SCHEMA.validate()  # against the OpenAPI 3.0 meta-schema
    assert set(OPERATIONS) == {
        "GET /chatbridge/api/sessions",
        "POST /chatbridge/api/sessions",
        "GET /chatbridge/api/sessions/{sessionId}",
        "DELETE /chatbridge/api/sessions/{sessionId}",
        "GET /chatbridge/api/sessions/{sessionId}/events",
        "POST /chatbridge/api/sessions/{sessionId}/stop",
        "GET /chatbridge/api/sessions/{sessionId}/export",
        "POST /chatbridge/api/watch",
        "POST /chatbridge/api/unwatch",
        "POST /chatbridge/api/attach",
        "POST /chatbridge/api/detach",
        "POST /chatbridge/api/suspend",
        "POST /chatbridge/api/send",
        "GET /chatbridge/api/events",
        "GET /chatbridge/api/openapi.yaml",
    }
    document = yaml.safe_load(SPEC_PATH.read_text())
    codes = document["components"]["schemas"]["ErrorCode"]["enum"]
    assert codes == [
        "bad_request",
        "session_unknown",
        "connection_unknown",
        "session_exists",
        "too_large",
        "busy",
        "forbidden",
    ]
    for label, operation in OPERATIONS.items():
        responses = operation.definition.raw["responses"]
        assert "403" in responses and "5XX" in responses, label


async def test_the_document_is_served_with_the_base_url(api: Any, jp_base_url: str) -> None:
    response = await api._fetch("chatbridge", "api", "openapi.yaml")
    assert response.headers["Content-Type"].startswith("application/yaml")
    served = yaml.safe_load(response.body)
    shipped = yaml.safe_load(SPEC_PATH.read_text())
    assert served["servers"][0]["url"] == jp_base_url
    assert {**served, "servers": shipped["servers"]} == shipped
    status, body = await api("GET", "openapi.yaml", headers={"Authorization": "token wrong"})
    assert (status, body["code"]) == (403, "forbidden")


# -- sending a generated case to the in-process server --------------------------------------


def _prepare(case: Any, base_url: str, token: str) -> requests.PreparedRequest:
    kwargs = case.as_transport_kwargs(base_url=base_url)
    allowed = {"method", "url", "headers", "params", "json", "data", "cookies"}
    assert set(kwargs) <= allowed, set(kwargs) - allowed
    kwargs["headers"] = {**kwargs.get("headers", {}), "Authorization": f"token {token}"}
    return requests.Request(**kwargs).prepare()


def _response(
    prepared: requests.PreparedRequest,
    status: int,
    headers: list[tuple[str, str]],
    content: bytes,
    started: float,
) -> schemathesis.Response:
    grouped: dict[str, list[str]] = {}
    for name, value in headers:
        grouped.setdefault(name, []).append(value)
    return schemathesis.Response(
        status_code=status,
        headers=grouped,
        content=content,
        request=prepared,
        elapsed=time.monotonic() - started,
        verify=True,
    )


async def _fetch(client: Any, prepared: requests.PreparedRequest) -> schemathesis.Response:
    started = time.monotonic()
    body = prepared.body
    if body is None and prepared.method in {"POST", "PUT", "PATCH"}:
        body = b""
    response = await client.fetch(
        prepared.path_url,  # the client knows the server's address
        method=prepared.method,
        headers=dict(prepared.headers),
        body=body,
        raise_error=False,
        allow_nonstandard_methods=True,
        request_timeout=WAIT,
    )
    return _response(
        prepared, response.code, list(response.headers.get_all()), response.body or b"", started
    )


async def _fetch_stream(port: int, prepared: requests.PreparedRequest) -> schemathesis.Response:
    """An SSE request: the status, headers and first frame of a stream (then hang up), or
    the whole error answer."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        lines = [f"GET {prepared.path_url} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
        lines += [f"{k}: {v}" for k, v in prepared.headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        status = int((await asyncio.wait_for(reader.readline(), WAIT)).split()[1])
        headers = []
        while line := (await asyncio.wait_for(reader.readline(), WAIT)).strip():
            name, _, value = line.decode("latin-1").partition(":")
            headers.append((name.strip(), value.strip()))
        found = {k.lower(): v for k, v in headers}
        if "content-length" in found:
            content = await reader.readexactly(int(found["content-length"]))
        else:  # chunked: read chunks until the first complete frame
            content = b""
            while b"\n\n" not in content:
                size = int((await asyncio.wait_for(reader.readline(), WAIT)).strip(), 16)
                content += (await asyncio.wait_for(reader.readexactly(size + 2), WAIT))[:-2]
            headers = [(k, v) for k, v in headers if k.lower() != "transfer-encoding"]
        return _response(prepared, status, headers, content, started)
    finally:
        writer.transport.abort()


async def _create_demo(client: Any, base_url: str, token: str) -> None:
    response = await client.fetch(
        f"{base_url}chatbridge/api/sessions",
        method="POST",
        body=json.dumps({"sessionId": DEMO}),
        headers={"Authorization": f"token {token}"},
    )
    assert response.code == 201


def _steer(case: Any, cid: str) -> None:
    """Point a positive case at the session and connection that exist (it stays valid)."""
    if "sessionId" in (case.path_parameters or {}):
        case.path_parameters["sessionId"] = DEMO
    if isinstance(case.body, dict) and "sessionId" in case.body:
        case.body["sessionId"] = DEMO
    elif isinstance(case.body, str):  # suspend's text/plain (sendBeacon) body
        case.body = json.dumps({"sessionId": DEMO})
    if case.operation.path.endswith(("/watch", "/unwatch", "/attach", "/detach", "/suspend")):
        case.headers["X-Connection-ID"] = cid


@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_operation_conforms_to_the_document(
    label: str,
    jp_asyncio_loop: asyncio.AbstractEventLoop,
    http_server_client: Any,
    jp_base_url: str,
    jp_http_port: int,
    jp_serverapp: Any,
    bridge: ChatBridge,
    streams: StreamFactory,
) -> None:
    operation = OPERATIONS[label]
    token = jp_serverapp.identity_provider.token
    base_url = f"http://127.0.0.1:{jp_http_port}{jp_base_url.rstrip('/')}"
    run: Callable[[Any], Any] = jp_asyncio_loop.run_until_complete
    cid = new_cid()
    run(streams.open(cid))  # a live connection for connection-scoped calls
    modes = st.sampled_from([GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
    cases = modes.flatmap(operation.as_strategy)
    is_stream = label == "GET /chatbridge/api/events"
    # An empty Last-Event-ID means "none" (anyOf integer or ""), and schemathesis's
    # negation of an anyOf can produce a value the other branch allows: so the stream's
    # negative cases are only checked for conformance here; test_fuzz.py checks that
    # each bad stream parameter gets a 400, with an exact oracle.
    checks = [c for c in CHECKS if not (is_stream and c is negative_data_rejection)]

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(case=cases, steer=st.sampled_from([True, True, False]))
    def check(case: Any, steer: bool) -> None:
        if steer and case.meta.generation.mode == GenerationMode.POSITIVE:
            _steer(case, cid)
        if DEMO not in bridge.sessions:  # a positive DELETE may have ended it
            run(_create_demo(http_server_client, jp_base_url, token))
        prepared = _prepare(case, base_url, token)
        if is_stream:
            response = run(_fetch_stream(jp_http_port, prepared))
        else:
            response = run(_fetch(http_server_client, prepared))
        case.validate_response(response, checks=checks)

    check()
