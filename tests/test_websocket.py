"""The session WebSocket: session-unknown fast path, replay, ack/nack, close on delete."""

from __future__ import annotations

import json
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError

from jupyter_chatbridge.server.bridge import ChatBridge

from .support import Api


async def _messages_until_close(ws: Any) -> list[dict]:
    received = []
    while (message := await ws.read_message()) is not None:
        received.append(json.loads(message))
    return received


async def _read(ws: Any) -> dict:
    message = await ws.read_message()
    assert message is not None, (ws.close_code, ws.close_reason)
    return json.loads(message)


async def test_browser_request_for_unknown_session_gets_close_4404(
    jp_ws_fetch: Any, jp_http_port: int
) -> None:
    ws = await jp_ws_fetch(
        "chatbridge",
        "api",
        "sessions",
        "ghost",
        "ws",
        headers={"Origin": f"http://localhost:{jp_http_port}"},
    )
    assert await ws.read_message() is None
    assert (ws.close_code, ws.close_reason) == (4404, "session unknown")
    ws.close()


async def test_script_request_for_unknown_session_gets_http_404(jp_ws_fetch: Any) -> None:
    with pytest.raises(HTTPClientError) as info:
        await jp_ws_fetch("chatbridge", "api", "sessions", "ghost", "ws")
    assert info.value.code == 404
    assert json.loads(info.value.response.body)["code"] == "session_unknown"


@pytest.mark.parametrize("origin", [None, "http://localhost"])
async def test_unauthenticated_socket_is_http_403(
    jp_ws_fetch: Any, api: Api, origin: str | None
) -> None:
    await api.ok("POST", "sessions", body={"sessionId": "s1"})
    headers = {"Authorization": "token wrong"}
    if origin:
        headers["Origin"] = origin
    for sid in ("s1", "ghost"):  # auth is checked before the session-unknown path
        with pytest.raises(HTTPClientError) as info:
            await jp_ws_fetch("chatbridge", "api", "sessions", sid, "ws", headers=headers)
        assert info.value.code == 403


@pytest.mark.parametrize("params", [{"afterSeq": "-1"}, {"afterSeq": "x"}])
async def test_bad_after_seq_is_http_400(jp_ws_fetch: Any, api: Api, params: dict) -> None:
    await api.ok("POST", "sessions", body={"sessionId": "s1"})
    with pytest.raises(HTTPClientError) as info:
        await jp_ws_fetch("chatbridge", "api", "sessions", "s1", "ws", params=params)
    assert info.value.code == 400


async def test_invalid_session_id_is_http_400_even_from_a_browser(jp_ws_fetch: Any) -> None:
    with pytest.raises(HTTPClientError) as info:
        await jp_ws_fetch(
            "chatbridge", "api", "sessions", "-bad", "ws", headers={"Origin": "http://localhost"}
        )
    assert info.value.code == 400


async def test_replay_after_seq_then_live_and_acknowledged_sends(
    jp_ws_fetch: Any, api: Api
) -> None:
    await api.ok("POST", "sessions", body={"sessionId": "s1"})
    await api.ok("POST", "send", body={"sessionId": "s1", "clientMsgId": "m1", "text": "one"})
    ws = await jp_ws_fetch("chatbridge", "api", "sessions", "s1", "ws", params={"afterSeq": "2"})
    replayed = [await _read(ws) for _ in range(3)]  # seq 3..5 of the first answer
    assert [e["seq"] for e in replayed] == [3, 4, 5]
    ws.write_message(json.dumps({"type": "send", "clientMsgId": "m2", "text": "two"}))
    frames = [await _read(ws) for _ in range(6)]
    ack = [f for f in frames if f["type"] == "ack"]
    assert ack == [{"type": "ack", "clientMsgId": "m2", "seq": 6, "duplicate": False}]
    events = [f for f in frames if "seq" in f and f["type"] != "ack"]
    assert [e["seq"] for e in events] == [6, 7, 8, 9, 10]
    ws.write_message(json.dumps({"type": "send", "clientMsgId": "m2", "text": "two"}))
    assert await _read(ws) == {"type": "ack", "clientMsgId": "m2", "seq": 6, "duplicate": True}
    ws.close()


@pytest.mark.parametrize(
    ("frame", "echo", "code"),
    [
        ("not json", None, "bad_request"),
        ("[1, 2]", None, "bad_request"),
        ('{"type": "shout", "clientMsgId": "m1"}', "m1", "bad_request"),
        ('{"type": "send", "text": "x"}', None, "bad_request"),
        ('{"type": "send", "clientMsgId": "m1", "text": 3}', "m1", "bad_request"),
        ('{"type": "send", "clientMsgId": "m1", "text": "' + "x" * 70000 + '"}', "m1", "too_large"),
    ],
)
async def test_bad_frames_are_nacked_and_change_nothing(
    jp_ws_fetch: Any, api: Api, bridge: ChatBridge, frame: str, echo: str | None, code: str
) -> None:
    await api.ok("POST", "sessions", body={"sessionId": "s1"})
    ws = await jp_ws_fetch("chatbridge", "api", "sessions", "s1", "ws")
    ws.write_message(frame)
    nack = await _read(ws)
    assert nack["type"] == "nack" and nack["clientMsgId"] == echo and nack["code"] == code
    assert nack["error"]
    assert bridge.sessions.get("s1").log.last_seq == 0
    ws.close()


async def test_deleting_the_session_sends_session_ended_then_closes_4404(
    jp_ws_fetch: Any, api: Api, bridge: ChatBridge
) -> None:
    await api.ok("POST", "sessions", body={"sessionId": "s1"})
    ws = await jp_ws_fetch("chatbridge", "api", "sessions", "s1", "ws")
    await api.ok("DELETE", "sessions", "s1")
    assert await _messages_until_close(ws) == [
        {"type": "session_ended", "sessionId": "s1", "seq": 1}
    ]
    assert (ws.close_code, ws.close_reason) == (4404, "session ended")
    ws.close()
    assert bridge.fanout.sockets == {}
