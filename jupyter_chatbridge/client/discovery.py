"""Finding the Jupyter server this process belongs to, with nothing configured.

In order: explicit arguments (handled by the caller), the environment the
extension exports to kernels its server starts (`JUPYTER_CHATBRIDGE_URL`,
`JUPYTER_CHATBRIDGE_TOKEN`), then the running-server file of the server whose
pid is `JPY_PARENT_PID` (set by jupyter_server for every kernel it starts).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

ENV_URL = "JUPYTER_CHATBRIDGE_URL"
ENV_TOKEN = "JUPYTER_CHATBRIDGE_TOKEN"


class ServerNotFound(LookupError):
    """No Jupyter server could be found for this process."""


def discover_server() -> tuple[str, str | None]:
    """The (server URL including base_url, token) of this process's Jupyter server."""
    url = os.environ.get(ENV_URL)
    if url:
        return url, os.environ.get(ENV_TOKEN) or None
    parent = os.environ.get("JPY_PARENT_PID")
    if parent and parent.isdigit():
        info = _running_server_info(int(parent))
        if info is not None:
            return str(info["url"]), info.get("token") or None
    raise ServerNotFound(
        "no Jupyter server found: pass server_url= and token=, or run inside a kernel "
        f"started by a server with jupyter_chatbridge (which sets {ENV_URL})"
    )


def _running_server_info(pid: int) -> dict[str, str] | None:
    try:
        from jupyter_core.paths import jupyter_runtime_dir
    except ImportError:  # pragma: no cover - jupyter_core comes with every kernel
        return None
    path = Path(jupyter_runtime_dir()) / f"jpserver-{pid}.json"
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and "url" in info else None
