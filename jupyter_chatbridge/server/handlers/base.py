"""What every chatbridge handler shares: auth resource, the bridge, contract-shaped errors."""

from __future__ import annotations

from http.client import responses
from typing import Any

from jupyter_server.auth.identity import (
    IdentityProvider,
    LegacyIdentityProvider,
    PasswordIdentityProvider,
)
from jupyter_server.base.handlers import APIHandler
from tornado import web

from ...protocol import ErrorCode, dumps, normalize_cid
from ...protocol.requests import InvalidRequest, parse_json_object, parse_session_id
from ..bridge import ChatBridge
from ..errors import BridgeError, bad_request

__all__ = [
    "AUTH_RESOURCE",
    "UNAVAILABLE_SETTING",
    "BridgeHandlerMixin",
    "ChatBridgeHandler",
    "bad_request",
    "canonical_connection_id",
]

AUTH_RESOURCE = "chatbridge"

# Where the app leaves the refusal every endpoint answers when it has no bridge
# (its store is held by another live server): a 503 naming the file and that pid.
UNAVAILABLE_SETTING = "chatbridge_unavailable"

# jupyter_server's own providers serve one user and name every token request a
# fresh random anonymous user, so their usernames identify nobody.
_SINGLE_USER_PROVIDERS = (IdentityProvider, PasswordIdentityProvider, LegacyIdentityProvider)
SINGLE_USER_OWNER = "*"

# HTTP errors raised by jupyter_server or tornado themselves, in the contract's codes.
_STATUS_CODES = {
    400: ErrorCode.BAD_REQUEST,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.SESSION_UNKNOWN,
    405: ErrorCode.BAD_REQUEST,
    413: ErrorCode.TOO_LARGE,
    429: ErrorCode.BUSY,
}

# Bytes a stream or socket may have on their way to the client before more waits
# for it to read: this paces history replays and makes a stalled reader visible.
WRITE_AHEAD_BYTES = 256 * 1024


def canonical_connection_id(raw: str | None) -> str | None:
    """A connection id as the client sent it, with a cid in the canonical lower case
    the server holds it in (a cid is case-insensitive); None for none."""
    if not raw:
        return None
    return normalize_cid(raw) or raw


class BridgeHandlerMixin:
    """The bridge, the caller's identity and contract-shaped errors, for any JupyterHandler."""

    auth_resource = AUTH_RESOURCE
    settings: dict[str, Any]
    identity_provider: Any
    current_user: Any
    log: Any

    @property
    def bridge(self) -> ChatBridge:
        """The server's bridge (see `ChatBridgeApp.initialize_settings`), or the 503
        the extension answers while it has none."""
        bridge = self.settings.get("chatbridge")
        if bridge is None:
            raise self.settings[UNAVAILABLE_SETTING]
        return bridge  # type: ignore[no-any-return]

    @property
    def owner(self) -> str:
        """The identity a connection is bound to.

        Under a provider that names users (JupyterHub, a custom one) it is the
        username; under jupyter_server's single-user providers every
        authenticated request is the server's one user.
        """
        if type(self.identity_provider) in _SINGLE_USER_PROVIDERS:
            return SINGLE_USER_OWNER
        return str(self.current_user.username)

    # -- errors in the contract's shape ------------------------------------------------

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, InvalidRequest):
            self.log.debug("chatbridge: 400 bad_request: %s", value)
            return
        if isinstance(value, BridgeError):
            # An expected refusal, not a server fault: no traceback.
            self.log.debug("chatbridge: %s %s: %s", value.status, value.code.value, value.message)
            return
        super().log_exception(typ, value, tb)  # type: ignore[misc]

    def send_error(self, status_code: int = 500, **kwargs: Any) -> None:
        exc_info = kwargs.get("exc_info")
        if exc_info and isinstance(exc_info[1], InvalidRequest):
            error = bad_request(str(exc_info[1]))
            kwargs["exc_info"] = (BridgeError, error, exc_info[2])
            exc_info = kwargs["exc_info"]
        if exc_info and isinstance(exc_info[1], BridgeError):
            status_code = exc_info[1].status
        super().send_error(status_code, **kwargs)  # type: ignore[misc]

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc_info = kwargs.get("exc_info")
        error = exc_info[1] if exc_info else None
        if isinstance(error, BridgeError):
            body = error.body()
            if error.retry_after is not None:
                self.set_header("Retry-After", str(error.retry_after))  # type: ignore[attr-defined]
        elif status_code >= 500:
            body = {"error": "internal server error; see the server log", "code": "internal"}
        else:
            code = _STATUS_CODES.get(status_code, ErrorCode.BAD_REQUEST)
            message = responses.get(status_code, "error")
            if isinstance(error, web.HTTPError) and error.log_message:
                message = error.log_message % error.args if error.args else error.log_message
            body = {"error": message, "code": code.value}
        self.set_header("Content-Type", "application/json")  # type: ignore[attr-defined]
        self.finish(dumps(body))  # type: ignore[attr-defined]


class ChatBridgeHandler(BridgeHandlerMixin, APIHandler):
    """Base of every REST and stream handler of the extension."""

    def connection_id_header(self) -> str | None:
        """The connection a REST call acts for (`X-Connection-ID`)."""
        return canonical_connection_id(self.request.headers.get("X-Connection-ID"))

    def json_body(self) -> dict[str, Any]:
        """The request body as a JSON object, or a 400."""
        return parse_json_object(self.request.body or b"{}", "request body")

    def body_session_id(self, body: dict[str, Any]) -> str:
        """The mandatory `sessionId` of a body, validated."""
        return parse_session_id(body)

    def write_json(self, status: int, body: Any) -> None:
        """Answer with a JSON body."""
        self.set_status(status)
        self.finish(dumps(body))
