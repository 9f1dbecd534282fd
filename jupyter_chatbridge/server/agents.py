"""The agent interface, and `EchoAgent`, the embedded default.

An agent answers one user message at a time by yielding text chunks; the bridge
turns them into `message_start`, `block_delta`… and `message_end` events, and an
exception into an `error` event. Select your own with::

    c.ChatBridgeApp.agent_class = "mypackage.MyAgent"

One agent instance is made per session, so it may keep conversation state.
It is a traitlets `LoggingConfigurable`: its own options are configurable as
`c.MyAgent.option = ...`, and `self.log` is the server's logger.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

from traitlets import Dict, Float, Unicode
from traitlets.config import LoggingConfigurable


@dataclass(frozen=True)
class UserMessage:
    """A user message handed to an agent."""

    session_id: str
    seq: int
    client_msg_id: str
    text: str
    connection_id: str | None


class Agent(LoggingConfigurable):
    """Base class of chat agents. Subclass it and implement `reply`."""

    session_id = Unicode(help="The session this agent answers in.")
    settings = Dict(
        help="The session's settings, as given when it was created (`POST sessions` "
        "`settings`); kept across server restarts. What they mean is the agent's to decide."
    )

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
