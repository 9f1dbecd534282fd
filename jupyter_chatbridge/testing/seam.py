"""The fault seam: a send handler that takes scripted faults, installed by test config.

Production code knows nothing of it. A test configuration (tests/conftest.py)
calls `install_fault_seam` before the server builds its handlers; the send
endpoint is then served by `FaultInjectingSendHandler`, which reads the
`FaultPlan` at `settings["chatbridge_faults"]` and, with no plan or an empty
one, behaves exactly like the production handler.
"""

from __future__ import annotations

from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web

from ..protocol import ErrorCode
from ..server import handlers
from ..server.errors import BridgeError
from ..server.handlers.api import SendHandler
from .faults import Fault

FAULTS_SETTING = "chatbridge_faults"


class FaultInjectingSendHandler(SendHandler):
    """`POST send` with the next scripted fault applied around the real work."""

    @web.authenticated
    @authorized
    async def post(self) -> None:
        request = self.send_request()  # malformed requests are refused as usual
        fault = self._take_fault()
        if fault is not None and fault.kind != "drop_after":
            self._inject(fault)  # nothing happened
            return
        result = await self.accept(request)
        if fault is not None:
            self._inject(fault)  # it happened, but the answer is lost
            return
        self.answer(result)

    def _take_fault(self) -> Fault | None:
        plan = self.settings.get(FAULTS_SETTING)
        fault = plan.take("send") if plan is not None else None
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


def install_fault_seam(monkeypatch: Any) -> None:
    """Serve `POST send` with `FaultInjectingSendHandler` in servers built from now on
    (until `monkeypatch` undoes it): call it from a test's server configuration."""
    monkeypatch.setattr(handlers, "SendHandler", FaultInjectingSendHandler)
