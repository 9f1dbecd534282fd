"""`GET chatbridge/`: the standalone chat page.

The HTML is a small shell; the client is plain ES modules and a stylesheet in
`jupyter_chatbridge/ui/static/`, served by the extension's static handler at
`{base_url}static/jupyter_chatbridge/`. Everything the modules need from the server
(base_url, the XSRF token) is written into data attributes here, so the page works
under any base_url. The page carries no code of its own, only data: an import map and
the client rules.

The rules: the modules take the parsed `protocol/client_rules.json` as a parameter, and
the page embeds that file as `<script type="application/json" id="chatbridge-rules">`
(read by `protocol.rules`, the same object the Python client uses). Embedding rather than
fetching it means no extra request before the page can start, no way for the page to run
without rules, and rules that always match this server; the page is `no-store`, so a new
server's rules reach it on the next load.

Cache-busting: `static_url` versions a URL with `?v=<hash of the file>`, but a module's
relative `import "./policy.js"` would not carry it, so a changed module could be served
stale from the browser's cache beside a fresh entry. The import map sends every module's
plain URL (what a relative import resolves to) to its versioned one, for every module in
the static directory and below it (the vendored marked and DOMPurify in `vendor/`), so
each is fetched once, under the version of its own content.
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin
from tornado import web

from ...protocol.rules import RULES
from .base import AUTH_RESOURCE

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Chat bridge</title>
<link rel="stylesheet" href="{css}">
<script type="importmap">{import_map}</script>
<script type="application/json" id="chatbridge-rules">{rules}</script>
<script type="module" src="{js}"></script>
</head>
<body data-base-url="{base_url}" data-xsrf-token="{xsrf}">
<header class="bar">
  <h1>Chat bridge</h1>
  <label class="picker">Session
    <select id="session-select" aria-label="session"></select>
  </label>
  <input id="new-session-name" placeholder="new session name" maxlength="64">
  <button id="new-session" type="button">New session</button>
  <button id="download" type="button" disabled
    title="Download the conversation as Markdown">Download</button>
  <span id="download-error" class="action-error" role="alert" hidden></span>
  <span id="conn-status" class="conn" data-state="connecting" role="status">connecting…</span>
</header>
<section id="session-gone" class="gone" hidden role="alert">
  <strong>This session no longer exists.</strong>
  <span id="gone-detail"></span>
  <button id="gone-reconnect" type="button">Reconnect</button>
  <button id="gone-new" type="button">New session</button>
</section>
<section id="live-status" class="live" hidden role="status"></section>
<main id="transcript" aria-live="polite"></main>
<div id="thinking" class="thinking" hidden>thinking…</div>
<form id="composer" class="composer">
  <textarea id="message" rows="2" placeholder="Write a message (Enter sends)" disabled></textarea>
  <button id="send" type="submit" disabled>Send</button>
  <button id="stop" type="button" hidden title="Stop the answer">Stop</button>
  <div id="composer-error" class="composer-error" role="alert" hidden></div>
</form>
<footer class="foot">connection <code id="cid"></code></footer>
<noscript>This page needs JavaScript.</noscript>
</body>
</html>
"""


ENTRY_MODULE = "chatbridge.js"


class ChatPageHandler(ExtensionHandlerMixin, JupyterHandler):
    """The chat page. A JupyterHandler, so cookie login and the login redirect work as
    on Jupyter's own pages."""

    auth_resource = AUTH_RESOURCE

    @web.authenticated
    @authorized
    def get(self) -> None:
        # Reading xsrf_token also sets the `_xsrf` cookie that the token must match.
        xsrf = self.xsrf_token
        page = PAGE.format(
            css=escape(self.static_url("chatbridge.css")),
            import_map=self.import_map(),
            rules=script_json(RULES),
            js=escape(self.static_url(ENTRY_MODULE)),
            base_url=escape(self.base_url),
            xsrf=escape(xsrf.decode() if isinstance(xsrf, bytes) else xsrf),
        )
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        # The page embeds a per-user token: never cache it.
        self.set_header("Cache-Control", "no-store")
        self.finish(page)

    def import_map(self) -> str:
        """Every module's plain URL -> its versioned URL, as JSON safe inside <script>."""
        static_dirs: list[str] = self.settings[f"{self.name}_static_paths"]
        modules = sorted(
            {p.relative_to(d).as_posix() for d in static_dirs for p in Path(d).rglob("*.js")}
        )
        imports = {
            self.static_url(name, include_version=False): self.static_url(name) for name in modules
        }
        return script_json({"imports": imports})


def script_json(value: object) -> str:
    r"""JSON to place inside a <script> element: "</" would end the element early, and JSON
    allows "<\/" for it."""
    return json.dumps(value, sort_keys=True).replace("</", "<\\/")
