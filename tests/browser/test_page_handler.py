"""The page handler over plain HTTP (no browser): login, base_url, assets."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tornado.httpclient import HTTPClientError

import jupyter_chatbridge.ui
from jupyter_chatbridge.protocol.rules import RULES

STATIC = Path(jupyter_chatbridge.ui.__file__).parent / "static"


async def test_page_needs_login_and_redirects_like_jupyter_pages(
    jp_fetch: Any, jp_base_url: str
) -> None:
    try:
        response = await jp_fetch(
            "chatbridge/", headers={"Authorization": ""}, follow_redirects=False
        )
    except HTTPClientError as error:
        response = error.response
    assert response.code == 302
    assert response.headers["Location"].startswith(f"{jp_base_url}login?next=")


async def test_page_embeds_base_url_xsrf_and_its_assets(jp_fetch: Any, jp_base_url: str) -> None:
    response = await jp_fetch("chatbridge/")
    html = response.body.decode()
    assert response.headers["Content-Type"].startswith("text/html")
    assert response.headers["Cache-Control"] == "no-store"
    assert f'data-base-url="{jp_base_url}"' in html
    assert re.search(r'data-xsrf-token="[^"]+"', html)
    assert "_xsrf=" in response.headers.get("Set-Cookie", "")
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert len(assets) == 2
    for asset in assets:
        assert asset.startswith(f"{jp_base_url}static/jupyter_chatbridge/")
        served = await jp_fetch(asset[len(jp_base_url) :].split("?")[0])
        assert served.code == 200 and served.body
    script = await jp_fetch("static/jupyter_chatbridge/chatbridge.js")
    assert "javascript" in script.headers["Content-Type"]


async def test_page_embeds_the_client_rules_and_an_import_map_of_every_module(
    jp_fetch: Any, jp_base_url: str
) -> None:
    html = (await jp_fetch("chatbridge/")).body.decode()
    # The rules the page's modules apply are the package's client_rules.json, not a copy.
    embedded = re.search(
        r'<script type="application/json" id="chatbridge-rules">(.*?)</script>', html
    )
    assert embedded is not None
    assert json.loads(embedded.group(1)) == RULES
    mapped = re.search(r'<script type="importmap">(.*?)</script>', html)
    assert mapped is not None
    imports = json.loads(mapped.group(1))["imports"]
    prefix = f"{jp_base_url}static/jupyter_chatbridge/"
    modules = sorted(p.relative_to(STATIC).as_posix() for p in STATIC.rglob("*.js"))
    assert sorted(imports) == [prefix + name for name in modules]
    for plain, versioned in imports.items():
        assert versioned.startswith(plain + "?v=")
