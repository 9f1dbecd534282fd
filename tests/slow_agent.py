"""An agent for restart tests in a real server process: slow, and it keeps a record.

Select it with `--ChatBridgeApp.agent_class=tests.slow_agent.SlowAgent` (the repo
root on PYTHONPATH). Every run appends its clientMsgId to `runs_file`, so a test
can count agent runs across server processes, not only infer them from events.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from traitlets import Float, Unicode

from jupyter_chatbridge.server.agents import Agent, UserMessage


class SlowAgent(Agent):
    """Answers "<prefix><words>", one word every `delay` seconds.

    A session whose settings have `"fail": "<why>"` fails after the prefix instead.
    """

    delay = Float(0.2, help="Seconds before each word.").tag(config=True)
    runs_file = Unicode("", help="A file each run appends its clientMsgId to.").tag(config=True)

    async def reply(self, message: UserMessage) -> AsyncIterator[str]:
        if self.runs_file:
            with open(self.runs_file, "a", encoding="utf-8") as runs:
                runs.write(message.client_msg_id + "\n")
        prefix = self.settings.get("prefix")
        yield prefix if isinstance(prefix, str) else "Slow: "
        failure = self.settings.get("fail")
        if isinstance(failure, str):  # a session created with {"fail": "..."}: a backend error
            raise RuntimeError(failure)
        for word in message.text.split():
            await asyncio.sleep(self.delay)
            yield word + " "
