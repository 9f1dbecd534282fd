"""`GET chatbridge/api/openapi.yaml`: the OpenAPI description shipped in the package."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from jupyter_server.auth.decorator import authorized
from tornado import web

from .base import ChatBridgeHandler

SPEC_PATH = Path(__file__).parent.parent / "openapi.yaml"
# The one `servers` entry of the file; the served copy names the real base_url there.
_SERVER_LINE = "\nservers:\n  - url: /\n"


@cache
def _spec_text() -> str:
    return SPEC_PATH.read_text(encoding="utf-8")


class OpenApiHandler(ChatBridgeHandler):
    """The REST API's OpenAPI document, authenticated like every other endpoint."""

    @web.authenticated
    @authorized
    def get(self) -> None:
        # A JSON string is a valid YAML scalar: base_url needs no further quoting.
        server = f"\nservers:\n  - url: {json.dumps(self.base_url)}\n"
        text = _spec_text().replace(_SERVER_LINE, server, 1)
        self.finish(text, set_content_type="application/yaml; charset=UTF-8")
