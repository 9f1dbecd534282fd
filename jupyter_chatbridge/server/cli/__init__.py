"""The `jupyter chatbridge` command (console script `jupyter-chatbridge`).

Works on a server's session store file from outside the server: `sessions`,
`show`, `export`, `delete` and `check`. `python -m jupyter_chatbridge.server.cli`
runs it too.
"""

from __future__ import annotations

from .app import ChatBridgeCommand, main

__all__ = ["ChatBridgeCommand", "main"]
