"""Prometheus metrics of the bridge, served by jupyter_server's own `/metrics`.

jupyter_server answers `/metrics` (authenticated unless `authenticate_prometheus`
is off) from `prometheus_client`'s default registry, and extensions register
their metrics there (jupyter-resource-usage does). Ours are registered once, at
import, so any number of servers in one process share one set and never collide:

- counters and histograms are process-wide objects; a bridge records into them
  through its `BridgeMetrics`, which is `NO_METRICS` (does nothing) when
  `ChatBridgeApp.metrics_enabled` is off;
- gauges are read at scrape time from the state of every live bridge (summed),
  so the hot path pays nothing for them; so are the frames delivered to
  connections: each connection's frame ids already count them (the sum of the
  live connections' last frame ids, plus those of connections gone, kept as they go).

Labels are bounded sets (outcome, error code, state, kind): never a session id or
a cid. Latencies are measured with `time.perf_counter`: they report real time even
where a test injects a fake scheduler.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .bridge import ChatBridge
    from .state import Connection

PREFIX = "chatbridge_"

# -- counters (prometheus_client appends `_total`) ----------------------------------------

EVENTS_PUBLISHED = Counter(
    PREFIX + "events_published", "Session events published (committed, then shown to receivers)."
)
RESUMES = Counter(
    PREFIX + "resumes",
    "Event streams opened, by outcome: resumed (the server held the connection and "
    "replayed all it missed), gap (frames the client asked for were lost), new (no state).",
    ["outcome"],
)
REPLAYED_FRAMES = Counter(
    PREFIX + "replayed_frames", "Frames re-sent from replay buffers on a Last-Event-ID resume."
)
SENDS = Counter(
    PREFIX + "sends",
    "User messages sent (REST and WebSocket), by outcome: accepted, duplicate (a repeated "
    "clientMsgId) or refused, with the contract's error code (empty unless refused).",
    ["outcome", "code"],
)
SLOW_CONSUMER_DROPS = Counter(
    PREFIX + "slow_consumer_drops",
    "Event streams dropped because their client stopped reading (max_stream_buffer_bytes).",
)
SESSION_UNKNOWN_CLOSES = Counter(
    PREFIX + "session_unknown_closes",
    "Session WebSockets closed with 4404: the session does not exist or was deleted.",
)
AGENT_ERRORS = Counter(
    PREFIX + "agent_errors",
    "Answers the agent failed (an `error` event), by kind: before_output (no text yet) "
    "or midway (after some text).",
    ["kind"],
)
STOPS = Counter(PREFIX + "stops", "Answers stopped on a user's request (the Stop endpoint).")
STORE_COMMIT_FAILURES = Counter(
    PREFIX + "store_commit_failures",
    "Store transactions that failed (disk full, I/O error, a write that cannot be saved).",
)

# -- histograms -------------------------------------------------------------------------------

STORE_COMMIT_SECONDS = Histogram(
    PREFIX + "store_commit_seconds",
    "Time one store transaction (a group commit) took, in the store's writer thread.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
SEND_RECEIPT_SECONDS = Histogram(
    PREFIX + "send_receipt_seconds",
    "Time from a send reaching the bridge to its durable receipt (the 202/200 or ack).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
ANSWER_FIRST_EVENT_SECONDS = Histogram(
    PREFIX + "answer_first_event_seconds",
    "Time from an answer's message_start to its first text (or its error).",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0),
)
ANSWER_DURATION_SECONDS = Histogram(
    PREFIX + "answer_duration_seconds",
    "Time from an answer's message_start to its message_end.",
    buckets=(0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0),
)

# Label children bound once: `.labels()` costs a locked dict lookup per call.
_RESUMED, _GAP, _NEW = (RESUMES.labels(outcome) for outcome in ("resumed", "gap", "new"))
_ACCEPTED = SENDS.labels("accepted", "")
_DUPLICATE = SENDS.labels("duplicate", "")
_BEFORE_OUTPUT = AGENT_ERRORS.labels("before_output")
_MIDWAY = AGENT_ERRORS.labels("midway")


class AnswerClock:
    """Times one answer: to its first text, and to its end; counts how it failed."""

    __slots__ = ("_output_seen", "_started")

    def __init__(self) -> None:
        self._started = time.perf_counter()
        self._output_seen = False

    def output(self) -> None:
        """The agent produced text (called per chunk; only the first is timed)."""
        if not self._output_seen:
            self._output_seen = True
            ANSWER_FIRST_EVENT_SECONDS.observe(time.perf_counter() - self._started)

    def failed(self) -> None:
        """The agent raised: an agent error, and the answer's first event if none came yet."""
        (_MIDWAY if self._output_seen else _BEFORE_OUTPUT).inc()
        self.output()

    def ended(self) -> None:
        """The answer's message_end was published."""
        ANSWER_DURATION_SECONDS.observe(time.perf_counter() - self._started)


class _NoAnswerClock(AnswerClock):
    def __init__(self) -> None:
        pass

    def output(self) -> None:
        pass

    def failed(self) -> None:
        pass

    def ended(self) -> None:
        pass


_NO_ANSWER_CLOCK = _NoAnswerClock()


class BridgeMetrics:
    """What one bridge records; `NO_METRICS` is the same interface doing nothing.

    Every `record_*` is called once per event, request or commit, never per watcher.
    """

    enabled = True

    def __init__(self) -> None:
        self._tracked = False
        self.retired_frames = 0
        """Frames delivered to this bridge's connections that are gone."""

    def track(self, bridge: ChatBridge) -> None:
        """Report this bridge's state in the gauges until `untrack` (one bridge each)."""
        self._tracked = True
        _LIVE_BRIDGES.add(bridge)

    def untrack(self, bridge: ChatBridge) -> None:
        """Stop reporting this bridge's state (it shut down); its frames stay counted."""
        if self._tracked:
            self._tracked = False
            _LIVE_BRIDGES.discard(bridge)
            _TALLY.retired_frames += self.retired_frames + _connection_frames(bridge)

    def retire_connection(self, connection: Connection) -> None:
        """A connection is gone: keep the frames it was delivered in the counter."""
        if self._tracked:  # after `untrack` its frames were counted already
            self.retired_frames += connection.last_frame_id

    def record_shown(self) -> None:
        """One session event shown (to watchers: each frame is counted by its id)."""
        EVENTS_PUBLISHED.inc()

    def record_socket_frames(self, frames: int) -> None:
        """Events written to a session socket (live or catching up)."""
        _TALLY.socket_frames += frames

    def record_stream_opened(self, welcome: Mapping[str, Any]) -> None:
        """An event stream opened with this welcome: its resume outcome and replay size."""
        if welcome["gap"]:
            _GAP.inc()
        elif welcome["resumed"]:
            _RESUMED.inc()
        else:
            _NEW.inc()
        if welcome["replayed"]:
            REPLAYED_FRAMES.inc(welcome["replayed"])

    def record_send(self, duplicate: bool, seconds: float) -> None:
        """A send answered with its durable receipt after `seconds`."""
        (_DUPLICATE if duplicate else _ACCEPTED).inc()
        SEND_RECEIPT_SECONDS.observe(seconds)

    def record_send_refused(self, code: str) -> None:
        """A send refused with the contract's error code (`ErrorCode` value)."""
        SENDS.labels("refused", code).inc()

    def record_slow_consumer_drop(self) -> None:
        """An event stream was dropped for not reading."""
        SLOW_CONSUMER_DROPS.inc()

    def record_session_unknown_close(self) -> None:
        """A session socket was closed with 4404."""
        SESSION_UNKNOWN_CLOSES.inc()

    def record_stop(self) -> None:
        """An answer was stopped on a user's request."""
        STOPS.inc()

    def answer_started(self) -> AnswerClock:
        """An answer's message_start was published: its clock."""
        return AnswerClock()

    def record_commit(self, seconds: float) -> None:
        """A store transaction committed after `seconds` (called from the writer thread)."""
        STORE_COMMIT_SECONDS.observe(seconds)

    def record_commit_failure(self) -> None:
        """A store transaction failed (called from the writer thread)."""
        STORE_COMMIT_FAILURES.inc()


class _NoMetrics(BridgeMetrics):
    """Records nothing and reports no state (`ChatBridgeApp.metrics_enabled = False`)."""

    enabled = False

    def __init__(self) -> None:
        super().__init__()

    def retire_connection(self, connection: Connection) -> None:
        pass

    def track(self, bridge: ChatBridge) -> None:
        pass

    def untrack(self, bridge: ChatBridge) -> None:
        pass

    def record_shown(self) -> None:
        pass

    def record_socket_frames(self, frames: int) -> None:
        pass

    def record_stream_opened(self, welcome: Mapping[str, Any]) -> None:
        pass

    def record_send(self, duplicate: bool, seconds: float) -> None:
        pass

    def record_send_refused(self, code: str) -> None:
        pass

    def record_slow_consumer_drop(self) -> None:
        pass

    def record_session_unknown_close(self) -> None:
        pass

    def record_stop(self) -> None:
        pass

    def answer_started(self) -> AnswerClock:
        return _NO_ANSWER_CLOCK

    def record_commit(self, seconds: float) -> None:
        pass

    def record_commit_failure(self) -> None:
        pass


NO_METRICS: BridgeMetrics = _NoMetrics()
"""The metrics of a bridge that records none (the default of a bare `ChatBridge`)."""


# -- gauges, read from the live bridges at scrape time ------------------------------------------

_LIVE_BRIDGES: weakref.WeakSet[ChatBridge] = weakref.WeakSet()


class _Tally:
    """Plain counts behind `chatbridge_frames_delivered_total`: every change and every
    scrape runs on the server's event loop, so no lock is needed."""

    retired_frames = 0  # frames of connections of bridges that shut down
    socket_frames = 0  # events written to session sockets


_TALLY = _Tally()

FRAMES_DELIVERED_HELP = (
    "Frames handed to receivers: to each watching connection (its stream, or its replay "
    "buffer while it has none; live, as a watch's catch-up, or a detached notice) and "
    "each session socket. Resume replays are chatbridge_replayed_frames_total."
)

_GAUGES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("connections", "Connections the server holds, by state: active (a stream is open) "
     "or inactive (waiting inactive_ttl for the client to come back).", ("state",)),
    ("open_streams", "Event streams (SSE) open now.", ()),
    ("open_session_sockets", "Session WebSockets open now.", ()),
    ("sessions", "Sessions the server holds.", ()),
    ("answers_running", "Sessions whose agent is answering now.", ()),
    ("inputs_queued", "User messages accepted and waiting for their session's agent.", ()),
    ("replay_buffer_bytes", "Bytes held in connections' replay buffers (a frame sent to N "
     "connections counts N times; its bytes are stored once).", ()),
)  # fmt: skip


class BridgeStateCollector(Collector):
    """The gauges: each scrape sums the state of every bridge that records metrics.

    Scrapes run on the server's event loop (jupyter_server's handler), as every
    state change does, so the registries are read between operations, never during one.
    """

    def describe(self) -> Iterable[Metric]:
        gauges = [self._family(name, help, labels) for name, help, labels in _GAUGES]
        return [CounterMetricFamily(PREFIX + "frames_delivered", FRAMES_DELIVERED_HELP), *gauges]

    def collect(self) -> Iterable[Metric]:
        totals = dict.fromkeys(
            ("active", "inactive", "streams", "sockets", "sessions", "running", "queued", "bytes"),
            0,
        )
        frames = _TALLY.retired_frames + _TALLY.socket_frames
        for bridge in list(_LIVE_BRIDGES):
            for key, value in _bridge_state(bridge):
                totals[key] += value
            frames += bridge.metrics.retired_frames + _connection_frames(bridge)
        families = {name: self._family(name, help, labels) for name, help, labels in _GAUGES}
        families["connections"].add_metric(["active"], totals["active"])
        families["connections"].add_metric(["inactive"], totals["inactive"])
        for name, key in (
            ("open_streams", "streams"),
            ("open_session_sockets", "sockets"),
            ("sessions", "sessions"),
            ("answers_running", "running"),
            ("inputs_queued", "queued"),
            ("replay_buffer_bytes", "bytes"),
        ):
            families[name].add_metric([], totals[key])
        delivered = CounterMetricFamily(PREFIX + "frames_delivered", FRAMES_DELIVERED_HELP, frames)
        return [delivered, *families.values()]

    @staticmethod
    def _family(name: str, help: str, labels: tuple[str, ...]) -> GaugeMetricFamily:
        return GaugeMetricFamily(PREFIX + name, help, labels=list(labels) or None)


def _connection_frames(bridge: ChatBridge) -> int:
    # Frame ids count from 1 per connection, one per frame delivered to it.
    return sum(c.last_frame_id for c in bridge.connections)


def _bridge_state(bridge: ChatBridge) -> Iterator[tuple[str, int]]:
    connections = list(bridge.connections)
    active = sum(1 for c in connections if c.active)
    yield "active", active
    yield "inactive", len(connections) - active
    yield "bytes", sum(c.replay.byte_size() for c in connections)
    yield "streams", len(bridge.streams)
    yield "sockets", sum(len(s) for s in bridge.fanout.sockets.values())
    sessions = list(bridge.sessions)
    yield "sessions", len(sessions)
    yield "running", sum(1 for s in sessions if s.running)
    yield "queued", sum(len(s.pending) for s in sessions)


REGISTRY.register(BridgeStateCollector())
