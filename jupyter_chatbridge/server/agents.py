"""The agent interface, and `EchoAgent`, the embedded default.

An agent answers one user message at a time by yielding text chunks; the bridge
turns them into `message_start`, `block_delta`… and `message_end` events, and an
exception into an `error` event. Select your own with::

    c.ChatBridgeApp.agent_class = "mypackage.MyAgent"

One agent instance is made per session. Each message arrives with the
conversation before it (`UserMessage.history`: earlier user messages and
finished answers, bounded in size), so an agent needs no store of its own.
It is a traitlets `LoggingConfigurable`: its own options are configurable as
`c.MyAgent.option = ...`, and `self.log` is the server's logger.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from traitlets import Dict, Float, Unicode
from traitlets.config import LoggingConfigurable


class Role:
    """Who said a `Turn`."""

    USER = "user"
    ASSISTANT = "assistant"


class Ending:
    """How an answer ended: the wire values of `message_end`'s `reason`."""

    COMPLETE = "complete"
    ERROR = "error"
    STOPPED = "stopped"
    INTERRUPTED = "interrupted"


@dataclass(frozen=True)
class Turn:
    """One earlier message of the conversation: a user message or a finished answer.

    `text` is what the user sent or what the answer streamed (partial if it did
    not complete); `ended` is how an answer ended (an `Ending` value), None for
    a user message.
    """

    role: str
    text: str
    ended: str | None = None


@dataclass(frozen=True)
class UserMessage:
    """A user message handed to an agent, with the conversation before it.

    `history` is oldest first, each answer right after the message it answered;
    the server bounds its size (the oldest turns are dropped first).
    """

    session_id: str
    seq: int
    client_msg_id: str
    text: str
    connection_id: str | None
    history: tuple[Turn, ...] = ()


class Agent(LoggingConfigurable):
    """Base class of chat agents. Subclass it and implement `reply`."""

    session_id = Unicode(help="The session this agent answers in.")
    settings = Dict(
        help="The session's settings, as given when it was created (`POST sessions` "
        "`settings`); kept across server restarts. What they mean is the agent's to decide."
    )

    @classmethod
    def validate_settings(cls, settings: dict[str, Any]) -> dict[str, Any]:
        """Check a new session's `settings` before the session is created.

        Raise `ValueError` with a message for the user (the server answers 400
        `bad_request` and creates nothing); return the settings to keep. The
        default accepts anything.
        """
        return settings

    def reply(self, message: UserMessage) -> AsyncIterator[str]:
        """Yield the answer to `message` as text chunks (an async generator).

        Raising ends the answer with an `error` event carrying the exception's
        text; cancellation (session deleted, server stopping) must be let through.
        """
        raise NotImplementedError

    async def close(self) -> None:
        """Release resources when the session is deleted or the server stops."""


class EchoAgent(Agent):
    """Echoes each message back word by word, so the whole streaming flow is visible
    with nothing configured. A session's `settings["prefix"]` (a string) replaces
    the configured `prefix`."""

    chunk_delay = Float(0.05, help="Seconds between chunks, so the answer visibly streams.").tag(
        config=True
    )
    prefix = Unicode("Echo: ", help="Text that starts every answer.").tag(config=True)

    async def reply(self, message: UserMessage) -> AsyncIterator[str]:
        prefix = self.settings.get("prefix")
        yield prefix if isinstance(prefix, str) else self.prefix
        for chunk in re.findall(r"\S+\s*|\s+", message.text):
            if self.chunk_delay > 0:
                await asyncio.sleep(self.chunk_delay)
            yield chunk
