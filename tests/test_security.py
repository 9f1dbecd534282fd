"""Who may do what: two users, cookie login with XSRF, origins, and no token in the log."""

from __future__ import annotations

import json
from typing import Any

import pytest
from jupyter_server.auth import IdentityProvider, User
from tornado.httpclient import HTTPClientError
from traitlets.config import Config

from jupyter_chatbridge.server.bridge import ChatBridge

from .support import Api, StreamFactory, new_cid

ALICE, BOB = "alice-token", "bob-token"


class TwoUsers(IdentityProvider):
    """A provider that names users, like JupyterHub's: one token per user."""

    def get_user(self, handler: Any) -> User | None:
        header = handler.request.headers.get("Authorization", "")
        token = header.removeprefix("token ").strip() or handler.get_argument("token", "")
        name = {ALICE: "alice", BOB: "bob", self.token: "alice"}.get(token)
        if name is None:
            return None
        handler._token_authenticated = True  # as jupyter_server's own provider marks it
        return User(username=name)


@pytest.fixture
def two_users(jp_server_config: Config) -> Config:
    jp_server_config["ServerApp"]["identity_provider_class"] = TwoUsers
    return jp_server_config


def as_user(token: str, **headers: str) -> dict[str, str]:
    return {"Authorization": f"token {token}", **headers}


async def test_a_cid_belongs_to_the_user_who_first_used_it(
    two_users: Config, api: Api, streams: StreamFactory, bridge: ChatBridge
) -> None:
    await api.ok("POST", "sessions", body={"sessionId": "s1"})
    cid = new_cid()
    alice = await streams.open(cid, auth=False, headers=as_user(ALICE))
    await api.ok(
        "POST",
        "watch",
        body={"sessionId": "s1"},
        headers=as_user(ALICE, **{"X-Connection-ID": cid}),
    )
    await api.ok(
        "POST",
        "attach",
        body={"sessionId": "s1"},
        headers=as_user(ALICE, **{"X-Connection-ID": cid}),
    )

    hijack = await streams.open(cid, auth=False, headers=as_user(BOB))
    assert hijack.status == 403 and b'"code":"forbidden"' in hijack.body
    for action in ("watch", "unwatch", "attach", "detach", "suspend"):
        status, body = await api(
            "POST",
            action,
            body={"sessionId": "s1"},
            headers=as_user(BOB, **{"X-Connection-ID": cid}),
        )
        assert (status, body["code"]) == (403, "forbidden"), action
    # Bob may send to the session, but not as Alice's connection.
    await api.ok(
        "POST",
        "send",
        body={"sessionId": "s1", "clientMsgId": "b1", "text": "hi"},
        headers=as_user(BOB, **{"X-Connection-ID": cid}),
    )

    # Alice's state is untouched: her stream is the live one, still watching and driving.
    assert not alice.ended and bridge.streams.get(cid) is not None
    assert bridge.connections.get(cid).owner == "alice"
    assert bridge.sessions.get("s1").watchers == {cid}
    assert bridge.sessions.get("s1").driver == cid
    events = await alice.wait_events(1)
    assert events[0]["clientMsgId"] == "b1" and events[0]["connectionId"] is None


async def test_each_user_has_their_own_connection_limit(
    two_users: Config, jp_server_config: Config, streams: StreamFactory, bridge: ChatBridge
) -> None:
    bridge.limits.max_connections_per_user = 2
    for _ in range(2):
        assert (await streams.open(new_cid(), auth=False, headers=as_user(ALICE))).status == 200
    refused = await streams.open(new_cid(), auth=False, headers=as_user(ALICE))
    assert refused.status == 429 and b'"code":"busy"' in refused.body
    assert (await streams.open(new_cid(), auth=False, headers=as_user(BOB))).status == 200


async def _cookie_login(port: int, base_url: str, token: str) -> dict[str, str]:
    """Log in like a browser at http://localhost: the login page gives _xsrf, a token URL
    the user cookie (whose name is derived from the host, so the host must match)."""
    from tornado.httpclient import AsyncHTTPClient

    client = AsyncHTTPClient()
    cookies: dict[str, str] = {}
    for url in ("login", f"api/status?token={token}"):
        response = await client.fetch(f"http://localhost:{port}{base_url}{url}", raise_error=False)
        for header in response.headers.get_list("Set-Cookie"):
            name, _, rest = header.partition("=")
            cookies[name] = rest.split(";", 1)[0]
    assert "_xsrf" in cookies and any(n.startswith("username-") for n in cookies), cookies
    return cookies


async def test_cookie_posts_need_the_xsrf_header(
    jp_serverapp: Any, bridge: ChatBridge, http_server: Any, jp_http_port: int, jp_base_url: str
) -> None:
    from tornado.httpclient import AsyncHTTPClient

    cookies = await _cookie_login(jp_http_port, jp_base_url, jp_serverapp.identity_provider.token)
    cookie = "; ".join(f"{k}={v}" for k, v in cookies.items())
    url = f"http://localhost:{jp_http_port}{jp_base_url}chatbridge/api/sessions"
    body = json.dumps({"sessionId": "s1"})
    client = AsyncHTTPClient()
    refused = await client.fetch(
        url, method="POST", body=body, headers={"Cookie": cookie}, raise_error=False
    )
    assert refused.code == 403
    assert json.loads(refused.body)["code"] == "forbidden"
    assert "s1" not in bridge.sessions
    accepted = await client.fetch(
        url, method="POST", body=body, headers={"Cookie": cookie, "X-XSRFToken": cookies["_xsrf"]}
    )
    assert accepted.code == 201 and "s1" in bridge.sessions


async def test_cross_origin_cookie_socket_is_refused(
    jp_ws_fetch: Any, jp_serverapp: Any, jp_http_port: int, jp_base_url: str, api: Api
) -> None:
    await api.ok("POST", "sessions", body={"sessionId": "s1"})
    cookies = await _cookie_login(jp_http_port, jp_base_url, jp_serverapp.identity_provider.token)
    cookie = "; ".join(f"{k}={v}" for k, v in cookies.items())
    for sid in ("s1", "ghost"):  # the origin is refused before the session-unknown path
        with pytest.raises(HTTPClientError) as info:
            await jp_ws_fetch(
                "chatbridge",
                "api",
                "sessions",
                sid,
                "ws",
                headers={"Authorization": "", "Cookie": cookie, "Origin": "http://evil.example"},
            )
        assert info.value.code == 403
    ws = await jp_ws_fetch(
        "chatbridge",
        "api",
        "sessions",
        "s1",
        "ws",
        headers={
            "Authorization": "",
            "Cookie": cookie,
            "Origin": f"http://localhost:{jp_http_port}",
        },
    )
    ws.close()


async def test_the_token_never_reaches_the_log(
    api: Api, streams: StreamFactory, jp_serverapp: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    token = jp_serverapp.identity_provider.token
    await jp_serverapp.extension_manager.start_all_extensions()  # logs where kernels find us
    await api.ok("POST", "sessions", body={"sessionId": "s1"})
    cid = new_cid()
    stream = await streams.open(cid, query=f"token={token}", auth=False)
    await api("POST", "watch", body={"sessionId": "nope"}, headers={"X-Connection-ID": cid})
    await streams.open("cid-bad", query=f"token={token}", auth=False)
    stream.cut()
    assert caplog.records
    assert all(token not in record.getMessage() for record in caplog.records)


async def test_send_beacon_suspend_passes_connection_and_xsrf_in_the_query(
    jp_serverapp: Any,
    http_server: Any,
    jp_http_port: int,
    jp_base_url: str,
    api: Api,
    streams: StreamFactory,
    bridge: ChatBridge,
) -> None:
    """navigator.sendBeacon can set no header: a cookie-logged-in page suspends its
    session with `connectionId` and `_xsrf` as query parameters and a text/plain body."""
    from tornado.httpclient import AsyncHTTPClient

    await api.ok("POST", "sessions", body={"sessionId": "s1"})
    cid = new_cid()
    await streams.open(cid)
    await api.ok("POST", "attach", body={"sessionId": "s1"}, headers={"X-Connection-ID": cid})
    cookies = await _cookie_login(jp_http_port, jp_base_url, jp_serverapp.identity_provider.token)
    cookie = "; ".join(f"{k}={v}" for k, v in cookies.items())
    url = f"http://localhost:{jp_http_port}{jp_base_url}chatbridge/api/suspend?connectionId={cid}"
    beacon = {
        "method": "POST",
        "body": '{"sessionId": "s1"}',
        "headers": {"Cookie": cookie, "Content-Type": "text/plain;charset=UTF-8"},
        "raise_error": False,
    }
    client = AsyncHTTPClient()
    refused = await client.fetch(url, **beacon)
    assert refused.code == 403 and not bridge.sessions.get("s1").suspended
    accepted = await client.fetch(f"{url}&_xsrf={cookies['_xsrf']}", **beacon)
    assert accepted.code == 204 and bridge.sessions.get("s1").suspended
