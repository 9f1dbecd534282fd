"""The asyncio client API: `AsyncChatClient` and its `AsyncSession` handles."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from ..clock import LoopScheduler, Scheduler
from ..protocol import EventType
from ..protocol.export import render
from ..protocol.transcript import Transcript
from .discovery import discover_server
from .outbox import Outbox, OutboxEvent, SendResponse, new_client_msg_id
from .policy import MAX_QUEUED_SENDS, MAX_SEND_RETRIES, RETRY_DELAY
from .stream import DEFAULT_IDLE_TIMEOUT, EventStream, StatusChange, _noop
from .transport import HTTPStatusError, HttpTransport, TransportError

log = logging.getLogger(__name__)

# Events a session handle holds for a reader that is not keeping up.
MAX_BUFFERED_EVENTS = 10000


class SendFailed(Exception):
    """A message was finally not delivered; `event` is its last `send_failed`."""

    def __init__(self, event: OutboxEvent) -> None:
        super().__init__(event.error or "message not delivered")
        self.event = event


class AgentError(Exception):
    """The agent answered with an `error` event."""


class AnswerStopped(Exception):
    """The answer was stopped (`stop()`, or another client's Stop) before it completed.

    `text` is what it had streamed until then.
    """

    def __init__(self, text: str) -> None:
        super().__init__("the answer was stopped before it completed")
        self.text = text


class SessionLost(Exception):
    """The session ended or no longer exists."""


class AsyncChatClient:
    """A client of one Jupyter server's chatbridge: event stream, send outbox and REST.

    ::

        async with AsyncChatClient("http://127.0.0.1:8888/", token) as client:
            session = await client.session("demo")
            print(await session.ask("hello"))

    With no `server_url`, the server is discovered (see `discover_server`).
    """

    def __init__(
        self,
        server_url: str | None = None,
        token: str | None = None,
        *,
        cid: str | None = None,
        scheduler: Scheduler | None = None,
        request_timeout: float = 30.0,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        retry_delay: float = RETRY_DELAY,
        max_send_retries: int = MAX_SEND_RETRIES,
        max_queued: int = MAX_QUEUED_SENDS,
        on_status: Callable[[StatusChange], None] = _noop,
        on_send: Callable[[OutboxEvent], None] = _noop,
        on_frame: Callable[[str, dict[str, Any]], None] = _noop,
    ) -> None:
        if server_url is None:
            server_url, found_token = discover_server()
            token = token if token is not None else found_token
        scheduler = scheduler or LoopScheduler()
        self.transport = HttpTransport(server_url, token, request_timeout=request_timeout)
        self._on_send = on_send
        self._on_frame = on_frame
        self.stream = EventStream(
            self.transport,
            on_event=self._dispatch,
            on_status=on_status,
            on_frame=self._frame,
            on_session_lost=self._session_lost,
            cid=cid,
            scheduler=scheduler,
            idle_timeout=idle_timeout,
        )
        self.outbox = Outbox(
            self._post_send,
            scheduler,
            self._send_event,
            max_queued=max_queued,
            max_retries=max_send_retries,
            retry_delay=retry_delay,
        )
        self._sessions: dict[str, AsyncSession] = {}
        self._send_waiters: dict[str, asyncio.Future[OutboxEvent]] = {}

    @property
    def cid(self) -> str:
        """This client's stable connection id, kept for its whole life."""
        return self.stream.cid

    async def connect(self) -> AsyncChatClient:
        """Open the event stream and wait for the welcome."""
        await self.stream.wait_connected()
        return self

    def reconnect(self) -> None:
        """The user's Reconnect: the stream starts again with a fresh attempt budget.

        Same cid and resume point, so the server replays what was missed; the
        outbox and its queued messages are kept.
        """
        if self.outbox.closed:
            raise RuntimeError("this client is closed")
        self.stream.restart()

    async def __aenter__(self) -> AsyncChatClient:
        return await self.connect()

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop the stream and the outbox; nothing is left running."""
        await self.outbox.aclose()
        await self.stream.close()
        for session in self._sessions.values():
            session._end("client closed")
        for future in self._send_waiters.values():
            future.cancel()
        self._send_waiters.clear()

    # -- REST -------------------------------------------------------------------------

    async def _rest(self, method: str, path: str, body: Any = None, **query: Any) -> Any:
        response = await self.transport.request(
            method, f"chatbridge/api/{path}", body, query=query or None
        )
        if response.status >= 400:
            raise HTTPStatusError(response.status, response.error, response.body)
        return response.body

    async def create_session(
        self,
        session_id: str | None = None,
        *,
        exist_ok: bool = False,
        settings: dict[str, Any] | None = None,
    ) -> Any:
        """Create a session; with `exist_ok`, an existing one is returned instead of a 409.

        `settings` are handed to the session's agent (`OpenAIAgent` reads `model`,
        `system_prompt` and `temperature`); a value it refuses is a 400
        (`HTTPStatusError`) and nothing is created. An existing session keeps its own.
        """
        body: dict[str, Any] = {"sessionId": session_id}
        if settings is not None:
            body["settings"] = settings
        try:
            return await self._rest("POST", "sessions", body)
        except HTTPStatusError as exc:
            if exist_ok and exc.status == 409 and session_id is not None:
                return await self.get_session(session_id)
            raise

    async def list_sessions(self) -> list[dict[str, Any]]:
        """Every session on the server."""
        return list((await self._rest("GET", "sessions"))["sessions"])

    async def get_session(self, session_id: str) -> dict[str, Any]:
        """One session's state: lastSeq, running, driver."""
        return dict(await self._rest("GET", f"sessions/{session_id}"))

    async def delete_session(self, session_id: str) -> None:
        """Delete a session; its watchers get `session_ended`."""
        await self._rest("DELETE", f"sessions/{session_id}")

    async def history(
        self, session_id: str, after: int = 0, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Events with seq > `after`, paging through the whole history when `limit` is None."""
        events: list[dict[str, Any]] = []
        while True:
            page = await self._rest(
                "GET", f"sessions/{session_id}/events", after=after, limit=limit or 1000
            )
            events.extend(page["events"])
            if (
                limit is not None
                or not page["events"]
                or page["events"][-1]["seq"] >= page["lastSeq"]
            ):
                return events
            after = page["events"][-1]["seq"]

    # -- sessions and sending -------------------------------------------------------------

    async def session(
        self,
        session_id: str,
        *,
        create: bool = True,
        after_seq: int | None = None,
        attach: bool = False,
        settings: dict[str, Any] | None = None,
    ) -> AsyncSession:
        """A handle on a session, watched on this client's stream.

        `create` makes the session if it does not exist, with `settings` for its
        agent (see `create_session`); `after_seq` also delivers the history after
        that seq (None: only new events); `attach` makes this client the session's
        driver.
        """
        if create:
            await self.create_session(session_id, exist_ok=True, settings=settings)
        handle = self.handle(session_id)
        handle.last_seq = await self.stream.watch(session_id, after_seq)
        if attach:
            await self.stream.call("attach", session_id)
        return handle

    def handle(self, session_id: str) -> AsyncSession:
        """The handle `session()` returns, without watching: add listeners before events flow.

        A lost session's handle is replaced by a fresh one (the session may exist again).
        """
        handle = self._sessions.get(session_id)
        if handle is None or handle.lost is not None:
            handle = self._sessions[session_id] = AsyncSession(self, session_id)
        return handle

    def send(self, session_id: str, text: str, client_msg_id: str | None = None) -> str:
        """Queue a message (ordered, retried, idempotent) and return its clientMsgId."""
        return self.outbox.enqueue(session_id, text, client_msg_id)

    async def send_and_wait(
        self, session_id: str, text: str, client_msg_id: str | None = None
    ) -> OutboxEvent:
        """Send and wait for the server's receipt; raises `SendFailed` on a final failure."""
        client_msg_id = self.send(session_id, text, client_msg_id)
        future = self._send_waiters.setdefault(
            client_msg_id, asyncio.get_running_loop().create_future()
        )
        return await future

    async def _post_send(self, session_id: str, client_msg_id: str, text: str) -> SendResponse:
        headers = (
            {"X-Connection-ID": self.stream.connection_id} if self.stream.connection_id else {}
        )
        body = {"sessionId": session_id, "clientMsgId": client_msg_id, "text": text}
        response = await self.transport.request(
            "POST", "chatbridge/api/send", body, headers=headers
        )
        answer = response.body if isinstance(response.body, dict) else {}
        return SendResponse(response.status, answer, response.retry_after)

    def _send_event(self, event: OutboxEvent) -> None:
        self._on_send(event)
        session = self._sessions.get(event.session_id)
        if session is not None:
            session._outbox_event(event)
        final = event.type == "send_accepted" or (
            event.type == "send_failed" and not event.will_retry
        )
        if final:
            future = self._send_waiters.pop(event.client_msg_id, None)
            if future is not None and not future.done():
                if event.type == "send_accepted":
                    future.set_result(event)
                else:
                    future.set_exception(SendFailed(event))

    # -- stream callbacks -------------------------------------------------------------

    def _dispatch(self, event: dict[str, Any]) -> None:
        session = self._sessions.get(event["sessionId"])
        if session is not None:
            session._receive(event)

    def _frame(self, kind: str, data: dict[str, Any]) -> None:
        self._on_frame(kind, data)
        if kind == EventType.DETACHED:
            session = self._sessions.get(str(data.get("sessionId")))
            if session is not None:
                session.detached = str(data.get("reason"))

    def _session_lost(self, session_id: str, reason: str) -> None:
        session = self._sessions.get(session_id)
        if session is not None:
            session._end(reason)


class AsyncSession:
    """One watched session: send to it, read its events exactly once, in seq order."""

    def __init__(self, client: AsyncChatClient, session_id: str) -> None:
        self.client = client
        self.id = session_id
        self.last_seq = -1
        self.lost: str | None = None
        self.detached: str | None = None
        self._listeners: list[Callable[[dict[str, Any]], None]] = []
        self._send_listeners: list[Callable[[OutboxEvent], None]] = []
        self._lost_listeners: list[Callable[[str], None]] = []
        self._queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._overflowed = False
        self._waiters: set[asyncio.Future[str]] = set()
        self._gap_task: asyncio.Task[None] | None = None

    def add_listener(self, callback: Callable[[dict[str, Any]], None]) -> None:
        """Call `callback(event)` for every session event from now on."""
        self._listeners.append(callback)

    def add_send_listener(self, callback: Callable[[OutboxEvent], None]) -> None:
        """Call `callback(outbox_event)` for this session's delivery states."""
        self._send_listeners.append(callback)

    def add_lost_listener(self, callback: Callable[[str], None]) -> None:
        """Call `callback(reason)` once the session is lost ("session_ended", …)."""
        self._lost_listeners.append(callback)

    def send(self, text: str, client_msg_id: str | None = None) -> str:
        """Queue a message; returns its clientMsgId (see `AsyncChatClient.send`)."""
        return self.client.send(self.id, text, client_msg_id)

    async def send_and_wait(self, text: str, client_msg_id: str | None = None) -> OutboxEvent:
        """Send and wait for the receipt (raises `SendFailed`)."""
        return await self.client.send_and_wait(self.id, text, client_msg_id)

    async def ask(self, text: str) -> str:
        """Send `text` and return the agent's whole answer to it.

        The answer is read by the transcript reducer (the clients' one rule for
        turning events into answers). Raises `SendFailed`, `AgentError` if the agent
        failed (or a server restart cut the answer short), `AnswerStopped` (with the
        partial text) if it was stopped, or `SessionLost`.
        """
        answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        transcript = Transcript(self.id)
        client_msg_id = new_client_msg_id()

        def settle() -> None:
            if answer.done():
                return
            if transcript.gap is not None:
                self._fill_gap(transcript, settle)
            reply = transcript.answer_to(client_msg_id)
            if reply is None:
                return
            if reply.error is not None:
                answer.set_exception(AgentError(reply.error))
            elif reply.done and reply.ended == "stopped":
                answer.set_exception(AnswerStopped(reply.text))
            elif reply.done:
                answer.set_result(reply.text)

        def on_event(event: dict[str, Any]) -> None:
            transcript.apply({"kind": "event", "event": event})
            settle()

        def on_send(event: OutboxEvent) -> None:
            if event.client_msg_id == client_msg_id:
                transcript.apply(event.transcript_input())
                settle()

        self._listeners.append(on_event)
        self._send_listeners.append(on_send)
        self._waiters.add(answer)
        try:
            await self.send_and_wait(text, client_msg_id)
            return await answer
        finally:
            self._listeners.remove(on_event)
            self._send_listeners.remove(on_send)
            self._waiters.discard(answer)

    async def stop(self, message_id: str | None = None) -> dict[str, Any]:
        """Stop the running answer (or the one named); idempotent.

        Returns the server's answer once the stopped answer's `message_end` is
        committed: `{"stopped": messageId or None, "reason": "stopped" |
        "not_running" | "already_ended", ...}`. An `ask()` waiting for that answer
        raises `AnswerStopped`; messages queued behind it are still answered.
        """
        body = {} if message_id is None else {"messageId": message_id}
        result: dict[str, Any] = await self.client._rest("POST", f"sessions/{self.id}/stop", body)
        return result

    def _fill_gap(self, transcript: Transcript, then: Callable[[], None]) -> None:
        """Fetch the events a transcript misses from history, once per hole."""
        gap = transcript.gap
        if gap is None or self._gap_task is not None:
            return

        async def fetch() -> None:
            try:
                missing = await self.gap_history(gap)
            finally:
                self._gap_task = None
            transcript.apply({"kind": "history", "events": missing})
            then()

        self._gap_task = asyncio.get_running_loop().create_task(fetch())

    async def gap_history(self, gap: Mapping[str, int]) -> list[dict[str, Any]]:
        """The events of a transcript's `gap` from the stored history ([] if unreachable)."""
        try:
            return await self.history(after=gap["after"], limit=gap["before"] - gap["after"] - 1)
        except (HTTPStatusError, TransportError, OSError) as exc:
            log.warning("chatbridge: could not fill a gap in %s: %s", self.id, exc)
            return []

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Iterate session events as they arrive; ends when the session is lost or closed."""
        while True:
            event = await self._queue.get()
            if event is None:
                return
            yield event

    async def history(self, after: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """The session's stored events after `after`."""
        return await self.client.history(self.id, after, limit)

    async def export(self, format: str = "markdown") -> str:
        """The session as a file to keep: `markdown`, `jsonl` or `ipynb` (a notebook of
        markdown cells); the same text `jupyter chatbridge export` writes."""
        return render(format, self.id, await self.history())

    async def attach(self) -> None:
        """Drive this session from this client (a previous driver is detached)."""
        await self.client.stream.call("attach", self.id)
        self.detached = None

    async def detach(self) -> None:
        """Stop driving this session."""
        await self.client.stream.call("detach", self.id)

    async def delete(self) -> None:
        """Delete the session on the server."""
        await self.client.delete_session(self.id)

    def _receive(self, event: dict[str, Any]) -> None:
        self.last_seq = event["seq"]
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("chatbridge: session listener failed")
        if self._queue.qsize() < MAX_BUFFERED_EVENTS:
            self._queue.put_nowait(event)
        elif not self._overflowed:
            self._overflowed = True
            log.warning("chatbridge: events() reader of %s is not keeping up; dropping", self.id)

    def _outbox_event(self, event: OutboxEvent) -> None:
        for listener in list(self._send_listeners):
            try:
                listener(event)
            except Exception:
                log.exception("chatbridge: send listener failed")

    def _end(self, reason: str) -> None:
        if self.lost is None:
            self.lost = reason
            self._queue.put_nowait(None)
            for waiter in list(self._waiters):
                if not waiter.done():
                    waiter.set_exception(SessionLost(f"session {self.id}: {reason}"))
            for listener in list(self._lost_listeners):
                try:
                    listener(reason)
                except Exception:
                    log.exception("chatbridge: lost listener failed")
