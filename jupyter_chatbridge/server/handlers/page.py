"""`GET chatbridge/`: the standalone chat page.

The HTML is a small shell; the client is one plain ES module and a stylesheet in
`jupyter_chatbridge/static/`, served by the extension's static handler at
`{base_url}static/jupyter_chatbridge/`. Everything the module needs from the
server (base_url, the XSRF token, the asset URLs) is written into data attributes
here, so the page works under any base_url and keeps its script out of the HTML
(no inline script for a Content-Security-Policy to forbid).
"""

from __future__ import annotations

from html import escape

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin
from tornado import web

from .base import AUTH_RESOURCE

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Chat bridge</title>
<link rel="stylesheet" href="{css}">
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
  <div id="composer-error" class="composer-error" role="alert" hidden></div>
</form>
<footer class="foot">connection <code id="cid"></code></footer>
<noscript>This page needs JavaScript.</noscript>
</body>
</html>
"""


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
            js=escape(self.static_url("chatbridge.js")),
            base_url=escape(self.base_url),
            xsrf=escape(xsrf.decode() if isinstance(xsrf, bytes) else xsrf),
        )
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        # The page embeds a per-user token: never cache it.
        self.set_header("Cache-Control", "no-store")
        self.finish(page)
