"""`RedisStore`: sessions in Redis, shared by every server process on it.

Selected by `c.ChatBridgeApp.store_url = "redis://host:port/db"`. Writes keep the
store contract of `SqliteStore`: each is one `queue.put` on the event loop, and one
writer thread sends whatever has queued up as one pipeline of Lua scripts (one
round trip, one fsync with `appendfsync always`); `flush()` is the barrier a
caller awaits before promising durability. Each write is a script (redis_scripts),
so it is atomic on the server and may be sent again after a lost reply.

The writer uses redis-py's blocking client in its own thread, as `SqliteStore`
does with its connection: `close()` is synchronous in the store protocol and
must commit what is queued, which an asyncio client on a stopping loop cannot.
What a client or an agent run waits for (a send, a lease, the newest seq) goes
through the event loop's asyncio client instead (`_on_loop`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import uuid
from typing import Any

from ..state import LoggedEvent, SendReceipt
from . import redis_scripts
from .barrier import Barrier
from .base import StoredSession, StoreError
from .redis_keys import RedisKeys

try:
    import redis
    import redis.asyncio
except ImportError:  # pragma: no cover - the extra is missing: open_store says so
    redis = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "chatbridge"
"""The key prefix: several deployments may share one Redis with their own prefix."""

# The writer lets writes with nobody waiting gather this long before it sends them;
# a flush (a send waiting for its 202) or close sends at once.
GROUP_COMMIT_WINDOW = 0.01

# An ordered append (an event no client sees before Redis holds it) is sent at once,
# unless more writes wait behind it: then it is a burst (an agent's fast answer), and
# its appends gather this long, so they go in few calls.
BURST_WINDOW = 0.002

# Writes kept for the next attempt while Redis is unreachable; past this many the
# oldest are dropped, loudly.
MAX_BACKLOG = 200_000

# Seconds a command may take before the writer counts Redis as unreachable.
SOCKET_TIMEOUT = 5.0

# The scripts run on the event loop's client.
_LOOP_SCRIPTS = {
    "send": redis_scripts.SEND,
    "renew": redis_scripts.LEASE_RENEW,
    "release": redis_scripts.LEASE_RELEASE,
}

MISSING_EXTRA = (
    "c.ChatBridgeApp.store_url names a Redis store, but the redis package is not "
    'installed: pip install "jupyter_chatbridge[redis]"'
)


_Write = tuple[str, Any]  # (kind, (keys, args))
_STOP = object()


def transient(exc: BaseException) -> bool:
    """True for a failure that may pass (Redis down, loading, read-only, disk or memory full)."""
    if redis is None:
        return False
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError | redis.ReadOnlyError):
        return True
    return isinstance(exc, redis.ResponseError) and str(exc).startswith(
        ("MISCONF", "LOADING", "BUSY", "TRYAGAIN", "CLUSTERDOWN", "OOM")
    )


class RedisStore:
    """Sessions in Redis: the same contract as `SqliteStore`, shared across processes.

    Opening pings Redis and writes one key, so a server never starts on a Redis it
    cannot use; any failure is a `StoreError` naming the URL.
    """

    def __init__(self, url: str, *, prefix: str = DEFAULT_PREFIX, max_events: int = 10_000) -> None:
        if redis is None:
            raise StoreError(MISSING_EXTRA)
        self.url = url
        self.description = f"Redis {url} (key prefix {prefix!r})"
        self.commits_immediately = False
        self.keys = RedisKeys(prefix)
        self._max_events = max(1, max_events)
        self.fence: dict[str, str] = {}
        """The lease token to check on each append, by session (empty: unfenced)."""
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._wake = threading.Event()
        self._aio: Any = None  # the event loop's client (`_on_loop`)
        self._aio_scripts: dict[str, Any] = {}
        self.client = redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=SOCKET_TIMEOUT,
            socket_connect_timeout=SOCKET_TIMEOUT,
        )
        self._scripts = {
            "append": self.client.register_script(redis_scripts.APPEND),
            "remember": self.client.register_script(redis_scripts.REMEMBER),
            "create": self.client.register_script(redis_scripts.CREATE),
            "delete": self.client.register_script(redis_scripts.DELETE),
            "trim": self.client.register_script(redis_scripts.TRIM),
            "append_next": self.client.register_script(redis_scripts.APPEND_NEXT),
            "end": self.client.register_script(redis_scripts.END),
            "drive": self.client.register_script(redis_scripts.DRIVE),
        }
        self.fenced: set[str] = set()
        """Sessions whose appends were refused by their fence (another process took over)."""
        self.written: dict[str, int] = {}
        """The seq of this process's newest ordered append, by session, as Redis answered
        it (absent when unknown): once `flush` returns, showing it shows all of them."""
        try:
            self.client.ping()
            self.client.set(f"{prefix}:schema", "1")
        except redis.RedisError as exc:
            self.client.close()
            raise self._fail("cannot be used", exc) from exc
        self._thread = threading.Thread(
            target=self._run, name="chatbridge-store:redis", daemon=True
        )
        self._thread.start()

    def _fail(self, problem: str, cause: BaseException) -> StoreError:
        return StoreError(
            f"chatbridge session store {self.url}: {problem} ({cause}). Check that Redis "
            "runs there, or set c.ChatBridgeApp.store_url to another one."
        )

    # -- reading -------------------------------------------------------------------------

    def load(self) -> list[StoredSession]:
        """Every stored session with its retained events and receipts, in creation order."""
        try:
            ids = [str(i) for i in self.client.zrange(self.keys.sessions, 0, -1)]
            pipe = self.client.pipeline(transaction=False)
            for session_id in ids:
                pipe.hgetall(self.keys.meta(session_id))
                pipe.xrange(self.keys.events(session_id))
                pipe.zrange(self.keys.receipts(session_id), 0, -1, withscores=True)
            replies = pipe.execute()
        except redis.RedisError as exc:
            raise self._fail("could not be read", exc) from exc
        stored: list[StoredSession] = []
        for index, session_id in enumerate(ids):
            meta, entries, receipts = replies[3 * index : 3 * index + 3]
            if not meta:
                continue
            session = StoredSession(
                session_id, float(meta["created"]), json.loads(meta["settings"])
            )
            session.events = [
                LoggedEvent(int(entry_id.split("-")[0]), fields["t"], fields["d"])
                for entry_id, fields in entries
            ]
            session.last_seq = int(meta.get("seq", 0))
            session.receipts = [
                SendReceipt(session_id, client_msg_id, int(seq)) for client_msg_id, seq in receipts
            ]
            stored.append(session)
        return stored

    # -- writing (on the event loop: one queue.put each) ------------------------------------

    def create_session(self, session_id: str, created: float, settings: dict[str, Any]) -> None:
        """Queue: record a new, empty session."""
        k = self.keys
        keys = [k.meta(session_id), k.events(session_id), k.receipts(session_id)]
        args = [session_id, repr(created), json.dumps(settings), uuid.uuid4().hex]
        self._put(("create", ([*keys, k.sessions, k.order, k.notices], args)))

    def delete_session(self, session_id: str) -> None:
        """Queue: remove every key of the session."""
        k = self.keys
        keys = [k.meta(session_id), k.events(session_id), k.receipts(session_id), k.sessions]
        self._put(("delete", (keys, [session_id])))

    def append(self, session_id: str, event: LoggedEvent) -> None:
        """Queue: record one event at its seq (refused if another process took that seq)."""
        k = self.keys
        keys = [k.meta(session_id), k.events(session_id), k.lease(session_id)]
        fence = self.fence.get(session_id, "")
        args = [event.seq, event.type, event.data, self._max_events, fence]
        self._put(("append", (keys, args)))

    def remember(self, receipt: SendReceipt) -> None:
        """Queue: record one receipt."""
        k = self.keys
        keys = [k.meta(receipt.session_id), k.receipts(receipt.session_id)]
        self._put(("remember", (keys, [receipt.client_msg_id, receipt.seq])))

    def trim(self, session_id: str, first_event_seq: int, first_receipt_seq: int) -> None:
        """Queue: forget old events (never the newest) and old receipts."""
        k = self.keys
        keys = [k.meta(session_id), k.events(session_id), k.receipts(session_id)]
        self._put(("trim", (keys, [first_event_seq, first_receipt_seq])))

    async def flush(self, urgent: bool = False) -> None:
        """Resolve when every write queued before this call is in Redis (or raise).
        Urgent or not: the writer sends an ordered append at once anyway."""
        barrier = Barrier.on_running_loop()
        self._put(barrier)
        self._wake.set()
        await barrier.future

    @property
    def closed(self) -> bool:
        """True once `close` was called."""
        return self._closed

    def close(self) -> None:
        """Send everything queued, stop the writer thread; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
            self._wake.set()
        self._thread.join()
        self.client.close()

    def _put(self, item: Any) -> None:
        if self._closed:
            if isinstance(item, Barrier):
                raise StoreError(f"chatbridge session store {self.url} is closed")
            log.warning("chatbridge: session store closed; dropped a %s write", item[0])
            return
        self._queue.put(item)

    # -- the writer thread ---------------------------------------------------------------

    def _run(self) -> None:
        backlog: list[_Write] = []
        stopping = False
        failing = False
        while not stopping:
            batch = [self._queue.get()]
            first = batch[0]
            if isinstance(first, Barrier) or first is _STOP:
                pass
            elif first[0] == "append_next":
                if not self._queue.empty():  # more behind it: a burst
                    self._wake.wait(BURST_WINDOW)
            else:
                self._wake.wait(GROUP_COMMIT_WINDOW)
            self._wake.clear()
            with contextlib.suppress(queue.Empty):
                while True:
                    batch.append(self._queue.get_nowait())
            writes = backlog
            barriers: list[Barrier] = []
            for item in batch:
                if item is _STOP:
                    stopping = True
                elif isinstance(item, Barrier):
                    barriers.append(item)
                else:
                    writes.append(item)
            error: StoreError | None = None
            try:
                self._commit(writes)
                backlog = []
                if failing:
                    log.warning("chatbridge: session store %s answers again", self.url)
                failing = False
            except Exception as exc:
                if transient(exc):
                    # Every write is idempotent: the whole backlog is sent again, in order.
                    error = StoreError(
                        f"chatbridge session store {self.url}: could not save {len(writes)} "
                        f"writes ({exc}); they will be tried again"
                    )
                    if not failing:  # once per outage, not once per attempt
                        log.error("%s", error)
                    failing = True
                    if len(writes) > MAX_BACKLOG:
                        log.error(
                            "chatbridge: session store %s: dropping %d unsaved writes",
                            self.url,
                            len(writes) - MAX_BACKLOG,
                        )
                    backlog = writes[-MAX_BACKLOG:]
                else:
                    # A conflict or a fence (another process writes this session), or a
                    # bug: retrying would block every later write, so the batch is dropped.
                    error = StoreError(
                        f"chatbridge session store {self.url}: dropped {len(writes)} writes "
                        f"that cannot be saved ({type(exc).__name__}: {exc})"
                    )
                    log.error("%s", error)
                    backlog = []
            for barrier in barriers:
                barrier.release(error)
        if backlog:
            log.error(
                "chatbridge: session store %s closed with %d unsaved writes", self.url, len(backlog)
            )

    def _commit(self, writes: list[_Write]) -> None:
        if not writes:
            return
        calls = _joined(writes)
        pipe = self.client.pipeline(transaction=False)
        for kind, (keys, args) in calls:
            self._scripts[kind](keys=keys, args=args, client=pipe)
        problems: list[str] = []
        for (kind, (keys, _args)), reply in zip(
            calls, pipe.execute(raise_on_error=False), strict=True
        ):
            if not isinstance(reply, Exception):
                if kind == "append_next":
                    self._note_written(self.keys.session_of(keys[0]), reply)
                continue
            if transient(reply):
                raise reply
            if str(reply).startswith("CHATBRIDGE_FENCED"):
                # Only that session's owner stops; every other write of the batch stands.
                self.fenced.add(self.keys.session_of(keys[0]))
                continue
            problems.append(f"{kind}: {reply}")
        if problems:
            raise StoreError("; ".join(problems[:3]))

    def _note_written(self, session_id: str, seq: int) -> None:
        if seq > 0:
            self.written[session_id] = seq
        else:  # written by an attempt whose reply was lost, or the session is gone
            self.written.pop(session_id, None)

    # -- many processes (redis_scripts: Redis assigns the seq) --------------------------------

    def append_next(
        self, session_id: str, head: str, tail: str, event_type: str, writer: str, counter: int
    ) -> None:
        """Queue: an event at the session's next seq (data = head + seq + tail)."""
        k = self.keys
        keys = [k.meta(session_id), k.events(session_id), k.lease(session_id)]
        keys.append(k.writers(session_id))
        fence = self.fence.get(session_id, "")
        args = [self._max_events, fence, writer, head, tail, event_type, counter]
        self._put(("append_next", (keys, args)))  # sent at once, or with its burst

    def end(self, session_id: str, head: str, tail: str, linger: int = 300) -> None:
        """Queue: the session's `session_ended` event, then the session is gone."""
        k = self.keys
        keys = [k.meta(session_id), k.events(session_id), k.receipts(session_id), k.sessions]
        keys.append(k.lease(session_id))
        keys.append(k.driver(session_id))
        self._put(("end", (keys, [session_id, head, tail, linger])))

    def claim_driver(self, session_id: str, connection_id: str) -> None:
        """Queue: this connection drives the session now (the previous one is told)."""
        keys = [self.keys.driver(session_id), self.keys.notices]
        self._put(("drive", (keys, [connection_id, session_id])))

    def _on_loop(self) -> Any:
        """The event loop's client (made at first use, closed by `aclose`): what a client
        or an agent run waits for goes through it, not through a thread as well."""
        if self._aio is None:
            self._aio = redis.asyncio.Redis.from_url(
                self.url,
                decode_responses=True,
                socket_timeout=SOCKET_TIMEOUT,
                socket_connect_timeout=SOCKET_TIMEOUT,
            )
            for name, source in _LOOP_SCRIPTS.items():
                self._aio_scripts[name] = self._aio.register_script(source)
        return self._aio

    async def send_message_async(
        self, session_id: str, client_msg_id: str, head: str, tail: str, max_receipts: int
    ) -> tuple[int, bool]:
        """A user message once per clientMsgId: (seq, duplicate); seq 0 when the session
        is gone."""
        self._on_loop()
        k = self.keys
        keys = [k.meta(session_id), k.events(session_id), k.receipts(session_id)]
        args: list[str | int] = [client_msg_id, head, tail, self._max_events, max_receipts]
        seq, duplicate = await self._aio_scripts["send"](keys=keys, args=args)
        return int(seq), bool(duplicate)

    async def aclose(self) -> None:
        """`close`, and the event loop's connections too."""
        self.close()
        if self._aio is not None:
            self._aio, aio = None, self._aio
            self._aio_scripts.clear()
            await aio.aclose()

    async def take_lease(self, session_id: str, token: str, ms: int) -> int | None:
        """Become the session's agent owner if nobody is (SET NX PX).

        Returns None if another holds it, else the session's newest seq as of
        taking it (one round trip): what the new owner must show before it answers.
        """
        async with self._on_loop().pipeline(transaction=False) as pipe:
            pipe.set(self.keys.lease(session_id), token, nx=True, px=ms)
            pipe.hget(self.keys.meta(session_id), "seq")
            taken, newest = await pipe.execute()
        return int(newest or 0) if taken else None

    async def renew_lease(self, session_id: str, token: str, ms: int) -> bool:
        """Keep the lease; False if it was lost (expired and taken)."""
        self._on_loop()
        keys = [self.keys.lease(session_id)]
        return bool(await self._aio_scripts["renew"](keys=keys, args=[token, ms]))

    async def release_lease(self, session_id: str, token: str) -> None:
        """Let go of the lease if this token still holds it."""
        self._on_loop()
        await self._aio_scripts["release"](keys=[self.keys.lease(session_id)], args=[token])

    async def last_seq(self, session_id: str) -> int:
        """The session's newest seq in Redis (0 if it is gone)."""
        return int(await self._on_loop().hget(self.keys.meta(session_id), "seq") or 0)

    def load_one(self, session_id: str) -> StoredSession | None:
        """Blocking: one session as stored, or None."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(self.keys.meta(session_id))
        pipe.xrange(self.keys.events(session_id))
        meta, entries = pipe.execute()
        if not meta:
            return None
        session = StoredSession(session_id, float(meta["created"]), json.loads(meta["settings"]))
        session.events = [
            LoggedEvent(int(entry_id.split("-")[0]), fields["t"], fields["d"])
            for entry_id, fields in entries
        ]
        session.last_seq = int(meta.get("seq", 0))
        return session


def _joined(writes: list[_Write]) -> list[_Write]:
    """The writes as script calls: consecutive ordered appends to one session under one
    fence and writer become one call (a burst of deltas costs one script, not one each)."""
    calls: list[_Write] = []
    for kind, (keys, args) in writes:
        if calls and kind == "append_next":
            last_kind, (last_keys, last_args) = calls[-1]
            if last_kind == kind and last_keys == keys and last_args[:3] == args[:3]:
                calls[-1] = (kind, (keys, [*last_args, *args[3:]]))
                continue
        calls.append((kind, (keys, args)))
    return calls
