"""`GET chatbridge/api/sessions/{id}/export`: a session as a file to keep, over REST.

The file is `protocol.export.render` of the session's history, the same text
`jupyter chatbridge export` and the Python client's `session.export()` make, served as
an attachment named after the session.
"""

from __future__ import annotations

import json
from typing import Any

import nbformat
import pytest

from jupyter_chatbridge.protocol.export import render
from jupyter_chatbridge.server.bridge import ChatBridge

from .support import Api, StreamFactory, eventually, new_cid

STALLED = pytest.mark.chatbridge(agent={"chunk_delay": 3600.0})


async def _export(jp_fetch: Any, session_id: str, **params: str) -> Any:
    return await jp_fetch(
        "chatbridge", "api", "sessions", session_id, "export", params=params, raise_error=False
    )


async def _conversation(api: Api, bridge: ChatBridge, texts: list[str]) -> list[dict[str, Any]]:
    await api.ok("POST", "sessions", body={"sessionId": "demo"})
    for n, text in enumerate(texts):
        body = {"sessionId": "demo", "clientMsgId": f"c{n}", "text": text}
        await api.ok("POST", "send", body=body)
    session = bridge.sessions.get("demo")
    ends = lambda: sum(e.type == "message_end" for e in session.log.shown_after(0))  # noqa: E731
    await eventually(lambda: ends() == len(texts))
    history = await api.ok("GET", "sessions", "demo", "events", params={"after": "0"})
    return history["events"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("fmt", "content_type", "filename"),
    [
        ("markdown", "text/markdown", "demo.md"),
        ("jsonl", "application/x-ndjson", "demo.jsonl"),
        ("ipynb", "application/x-ipynb+json", "demo.ipynb"),
    ],
)
async def test_each_format_is_the_exports_text_as_an_attachment_named_after_the_session(
    jp_fetch: Any, api: Api, bridge: ChatBridge, fmt: str, content_type: str, filename: str
) -> None:
    history = await _conversation(api, bridge, ["hello there", "and *again*"])
    response = await _export(jp_fetch, "demo", format=fmt)
    assert response.code == 200
    assert response.headers["Content-Type"] == f"{content_type}; charset=UTF-8"
    assert response.headers["Content-Disposition"] == f'attachment; filename="{filename}"'
    text = response.body.decode("utf-8")
    # One rule, one place: what the CLI and the Python client make of the same history.
    assert text == render(fmt, "demo", history)
    if fmt == "markdown":
        assert "**User**\n\nhello there" in text and "**Agent**\n\nEcho: and *again*" in text
    elif fmt == "jsonl":
        assert [json.loads(line) for line in text.splitlines()] == history
    else:
        notebook = nbformat.reads(text, as_version=4)
        nbformat.validate(notebook)
        sources = [cell.source for cell in notebook.cells]
        assert "**Agent**\n\nEcho: hello there" in sources


async def test_markdown_is_the_default_format(jp_fetch: Any, api: Api, bridge: ChatBridge) -> None:
    history = await _conversation(api, bridge, ["hi"])
    response = await _export(jp_fetch, "demo")
    assert response.code == 200
    assert response.body.decode() == render("markdown", "demo", history)
    assert response.headers["Content-Disposition"] == 'attachment; filename="demo.md"'


@STALLED
async def test_a_stopped_answer_is_exported_with_its_partial_text_and_says_stopped(
    jp_fetch: Any, api: Api, streams: StreamFactory
) -> None:
    await api.ok("POST", "sessions", body={"sessionId": "demo"})
    cid = new_cid()
    stream = await streams.open(cid)
    await api.ok("POST", "watch", body={"sessionId": "demo"}, headers={"X-Connection-ID": cid})
    body = {"sessionId": "demo", "clientMsgId": "c1", "text": "tell me a long story"}
    await api.ok("POST", "send", body=body)
    await stream.wait_for(
        lambda s: any(e["type"] == "block_delta" for e in s.session_events("demo"))
    )
    assert (await api.ok("POST", "sessions", "demo", "stop"))["reason"] == "stopped"
    text = (await _export(jp_fetch, "demo")).body.decode()
    assert "**Agent**\n\nEcho:\n\n*The answer was stopped before it completed.*" in text


@pytest.mark.parametrize("fmt", ["", "pdf", "MARKDOWN", "md", "markdown,jsonl"])
async def test_an_unknown_format_is_400_and_changes_nothing(
    jp_fetch: Any, api: Api, bridge: ChatBridge, fmt: str
) -> None:
    await api.ok("POST", "sessions", body={"sessionId": "demo"})
    response = await _export(jp_fetch, "demo", format=fmt)
    body = json.loads(response.body)
    assert (response.code, body["code"]) == (400, "bad_request")
    assert "format must be one of jsonl, markdown, ipynb" in body["error"]
    assert [s.id for s in bridge.sessions] == ["demo"]
    assert bridge.sessions.get("demo").log.last_seq == 0


async def test_an_unknown_session_is_404_and_a_bad_id_400(jp_fetch: Any, api: Api) -> None:
    response = await _export(jp_fetch, "ghost", format="markdown")
    assert (response.code, json.loads(response.body)["code"]) == (404, "session_unknown")
    response = await _export(jp_fetch, "-bad", format="markdown")
    assert (response.code, json.loads(response.body)["code"]) == (400, "bad_request")
    assert await api.ok("GET", "sessions") == {"sessions": []}


async def test_an_export_needs_authentication(jp_fetch: Any, api: Api) -> None:
    await api.ok("POST", "sessions", body={"sessionId": "demo"})
    response = await jp_fetch(
        "chatbridge",
        "api",
        "sessions",
        "demo",
        "export",
        headers={"Authorization": "token wrong"},
        raise_error=False,
    )
    assert (response.code, json.loads(response.body)["code"]) == (403, "forbidden")
