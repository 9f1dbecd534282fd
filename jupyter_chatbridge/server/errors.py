"""`BridgeError`: a refusal in the contract's shape (HTTP status, error code, message)."""

from __future__ import annotations

from ..protocol import ErrorCode


class BridgeError(Exception):
    """A refusal with the contract's status and error code."""

    def __init__(
        self, status: int, code: ErrorCode, message: str, *, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after

    def body(self) -> dict[str, str]:
        """The JSON error body of the contract."""
        return {"error": self.message, "code": self.code.value}


def bad_request(message: str) -> BridgeError:
    """A 400 `bad_request` refusal."""
    return BridgeError(400, ErrorCode.BAD_REQUEST, message)


def session_unknown(session_id: str) -> BridgeError:
    """The 404 `session_unknown` of a session the server does not hold."""
    return BridgeError(404, ErrorCode.SESSION_UNKNOWN, f"session {session_id!r} does not exist")
