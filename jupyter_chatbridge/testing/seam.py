"""The fault seam: send and Stop handlers that take scripted faults, installed by test config.

Production code knows nothing of it. A test configuration (tests/conftest.py)
calls `install_fault_seam` before the server builds its handlers; the send and Stop
endpoints are then served by `FaultInjectingSendHandler` and `FaultInjectingStopHandler`,
which read the `FaultPlan` at `settings["chatbridge_faults"]` (endpoints `"send"` and
`"stop"`) and, with no plan or an empty one, behave exactly like the production handlers.
"""

from __future__ import annotations

from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web

from ..protocol import ErrorCode
from ..protocol.requests import parse_stop
from ..server import handlers
from ..server.errors import BridgeError
from ..server.handlers.api import SendHandler, StopHandler
from .faults import Fault

FAULTS_SETTING = "chatbridge_faults"


class _FaultInjection(web.RequestHandler):
    """Takes the next fault of an endpoint from the plan and answers with it."""

    def _take_fault(self, endpoint: str) -> Fault | None:
        plan = self.settings.get(FAULTS_SETTING)
        fault = plan.take(endpoint) if plan is not None else None
        return fault if fault is not None and fault.kind != "none" else None

    def _inject(self, fault: Fault) -> None:
        if fault.kind == "status":
            if fault.status_code >= 500:
                self.send_error(fault.status_code)
                return
            code = ErrorCode.BUSY if fault.status_code == 429 else ErrorCode.BAD_REQUEST
            message = f"injected fault: HTTP {fault.status_code}"
            error = BridgeError(fault.status_code, code, message, retry_after=fault.retry_after)
            self.send_error(fault.status_code, exc_info=(BridgeError, error, None))
            return
        connection: Any = self.request.connection
        connection.stream.close()


class FaultInjectingSendHandler(SendHandler, _FaultInjection):
    """`POST send` with the next scripted fault applied around the real work."""

    @web.authenticated
    @authorized
    async def post(self) -> None:
        request = self.send_request()  # malformed requests are refused as usual
        fault = self._take_fault("send")
        if fault is not None and fault.kind != "drop_after":
            self._inject(fault)  # nothing happened
            return
        result = await self.accept(request)
        if fault is not None:
            self._inject(fault)  # it happened, but the answer is lost
            return
        self.answer(result)


class FaultInjectingStopHandler(StopHandler, _FaultInjection):
    """`POST sessions/{id}/stop` with the next scripted "stop" fault: a status or a drop
    before the Stop (nothing stopped), or a drop after it (stopped, the answer lost)."""

    @web.authenticated
    @authorized
    async def post(self, session_id: str) -> None:
        fault = self._take_fault("stop")
        if fault is not None and fault.kind != "drop_after":
            self._inject(fault)
            return
        if fault is None:
            stopping = super().post(session_id)  # the decorators type it as optional
            if stopping is not None:
                await stopping
            return
        await self.bridge.stop_answer(session_id, parse_stop(self.json_body()))
        self._inject(fault)  # it stopped, but the answer is lost


def install_fault_seam(monkeypatch: Any) -> None:
    """Serve `POST send` and `POST sessions/{id}/stop` with the fault-injecting handlers in
    servers built from now on (until `monkeypatch` undoes it): call it from a test's server
    configuration."""
    monkeypatch.setattr(handlers, "SendHandler", FaultInjectingSendHandler)
    monkeypatch.setattr(handlers, "StopHandler", FaultInjectingStopHandler)
