"""Run notebook cells in a kernel that a real `jupyter server` started, as JupyterLab does.

The kernel is started with `POST api/kernels` and driven over its
`api/kernels/{id}/channels` WebSocket (Jupyter messaging protocol v5): one
`execute_request` per code cell, then the cell's iopub outputs until its `status: idle`.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

OUTPUT_TYPES = {"stream", "error", "display_data", "execute_result"}


@dataclass
class CellRun:
    """What one cell printed and displayed, as nbformat would store it."""

    outputs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(o["text"] for o in self.outputs if o["output_type"] == "stream")

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [o for o in self.outputs if o["output_type"] == "error"]


class RemoteKernel:
    """One kernel of a running server, reached through the server's REST and WebSocket API."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.token = token
        self.kernel_id: str | None = None
        self.session = uuid.uuid4().hex
        self._socket: WebSocketClientConnection | None = None
        # Widget models as the front end holds them: comm_open state plus every update.
        self.widget_states: dict[str, dict[str, Any]] = {}

    async def start(self, path: str = "", timeout: float = 60) -> None:
        """Start a python3 kernel whose working directory is `path` (relative to the root)."""
        response = await AsyncHTTPClient().fetch(
            f"{self.url}api/kernels",
            method="POST",
            body=json.dumps({"name": "python3", "path": path}),
            headers={"Authorization": f"token {self.token}"},
            request_timeout=timeout,
        )
        self.kernel_id = json.loads(response.body)["id"]
        ws_url = self.url.replace("http://", "ws://")
        self._socket = await websocket_connect(
            HTTPRequest(
                f"{ws_url}api/kernels/{self.kernel_id}/channels?session_id={self.session}",
                headers={"Authorization": f"token {self.token}"},
            ),
            max_message_size=64 << 20,
        )
        # A kernel_info round trip: the kernel is up and its iopub is connected.
        await self._request("kernel_info_request", {}, "shell", timeout)

    async def execute(self, code: str, timeout: float = 120) -> CellRun:
        """Run one cell; returns its outputs once the kernel is idle again."""
        run = CellRun()
        msg_id = self._send(
            "execute_request",
            {
                "code": code,
                "silent": False,
                "store_history": True,
                "user_expressions": {},
                "allow_stdin": False,
                "stop_on_error": True,
            },
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            message = await self._read(deadline - loop.time())
            if message["parent_header"].get("msg_id") != msg_id or message["channel"] != "iopub":
                continue
            kind = message["msg_type"]
            if kind in OUTPUT_TYPES:
                run.outputs.append({"output_type": kind, **message["content"]})
            elif kind == "status" and message["content"]["execution_state"] == "idle":
                return run

    async def shutdown(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        if self.kernel_id is not None:
            await AsyncHTTPClient().fetch(
                f"{self.url}api/kernels/{self.kernel_id}",
                method="DELETE",
                headers={"Authorization": f"token {self.token}"},
                raise_error=False,
            )
            self.kernel_id = None

    def _send(self, msg_type: str, content: dict[str, Any], channel: str = "shell") -> str:
        assert self._socket is not None
        msg_id = uuid.uuid4().hex
        header = {
            "msg_id": msg_id,
            "msg_type": msg_type,
            "session": self.session,
            "username": "test",
            "version": "5.3",
            "date": "",
        }
        message = {
            "header": header,
            "parent_header": {},
            "metadata": {},
            "content": content,
            "channel": channel,
            "buffers": [],
        }
        self._socket.write_message(json.dumps(message))
        return msg_id

    async def _request(
        self, msg_type: str, content: dict[str, Any], channel: str, timeout: float
    ) -> dict[str, Any]:
        msg_id = self._send(msg_type, content, channel)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            message = await self._read(deadline - loop.time())
            if message["parent_header"].get("msg_id") == msg_id and message["channel"] == channel:
                return message

    async def _read(self, timeout: float) -> dict[str, Any]:
        assert self._socket is not None
        raw = await asyncio.wait_for(self._socket.read_message(), max(timeout, 0.01))
        if raw is None:
            raise ConnectionError("the kernel's channels WebSocket closed")
        if isinstance(raw, bytes):  # a binary frame (buffers): only its JSON parts matter here
            return {"channel": "", "parent_header": {}, "msg_type": "", "content": {}}
        result: dict[str, Any] = json.loads(raw)
        self._track_widget(result)
        return result

    def _track_widget(self, message: dict[str, Any]) -> None:
        content = message.get("content", {})
        data = content.get("data", {})
        if message.get("msg_type") == "comm_open":
            self.widget_states[content["comm_id"]] = dict(data.get("state", {}))
        elif message.get("msg_type") == "comm_msg" and data.get("method") == "update":
            self.widget_states.setdefault(content["comm_id"], {}).update(data.get("state", {}))
