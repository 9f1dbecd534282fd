// The tab's SSE stream (chatbridge/api/events?cid=…): it carries every session event the
// page shows. There is one per tab, bound to the tab's stable cid, so the server keeps the
// tab's watches across reconnects; the browser's native reconnect sends Last-Event-ID and
// the server replays exactly the frames that were missed.

import { ReconnectBudget } from "./policy.js";

// Session events but "error", whose name EventSource shares (see `connect`).
const SESSION_EVENT_TYPES = [
  "user_message",
  "message_start",
  "block_delta",
  "message_end",
  "session_ended",
];

/**
 * The tab's event stream. A lost stream is first left to the browser's native reconnect,
 * which sends Last-Event-ID so the server replays what was missed. If that attempt fails
 * too, or the browser gives up (it does on any non-200 answer), the stream backs off and
 * reconnects itself, passing the last frame id as `lastEventId`. The rules' reconnect
 * budget counts the attempts: a welcome opens the connection, and only a stream that
 * stayed up for the stability time or delivered a session event refills it, so a server
 * that accepts and drops at once leaves the page "offline" until asked again.
 *
 * A stream can also die without a word (a half-open connection after sleep or a network
 * change): the browser then shows nothing at all. The stream asks for its heartbeat as
 * events (`heartbeat=event`: an EventSource hides comments), and one that delivered no
 * frame for the rules' `heartbeat.idleTimeoutMs` is treated as failed and reconnected.
 */
export class EventStream {
  constructor(rules, url, cid, handlers) {
    this.budget = new ReconnectBudget(rules);
    this.url = url;
    this.cid = cid;
    this.handlers = handlers;
    this.source = null;
    this.lastFrameId = null;
    this.timer = null;
    this.retryInMs = null; // the delay of the pending reconnect (for tests and the console)
    this.idleTimeoutMs = rules.heartbeat.idleTimeoutMs;
    this.watchdog = null;
    this.lastFrameAt = 0;
    this.pings = 0; // heartbeats received (for tests and the console)
    this.idleDrops = 0; // streams given up as silent (for tests and the console)
  }

  connect() {
    clearTimeout(this.timer);
    this.timer = null;
    if (this.source) this.source.close();
    const query = new URLSearchParams({ cid: this.cid, heartbeat: "event" });
    if (this.lastFrameId !== null) query.set("lastEventId", String(this.lastFrameId));
    const source = new EventSource(`${this.url}?${query}`);
    this.source = source;
    this.heard();
    const frame = (handle) => (event) => {
      // Frames of a stream this object already replaced are stale.
      if (source !== this.source) return;
      this.heard();
      const frameId = Number(event.lastEventId);
      if (event.lastEventId && Number.isInteger(frameId)) this.lastFrameId = frameId;
      let data;
      try {
        data = JSON.parse(event.data);
      } catch {
        console.warn("chatbridge: ignored a frame that is not JSON", event.data);
        return;
      }
      handle(data);
    };
    source.addEventListener(
      "welcome",
      frame((welcome) => {
        this.budget.opened(performance.now());
        this.handlers.onWelcome(welcome);
      }),
    );
    const sessionEvent = (event) => {
      this.budget.liveEvent(); // the stream works: its budget is full again
      this.handlers.onSessionEvent(event);
    };
    for (const type of SESSION_EVENT_TYPES) source.addEventListener(type, frame(sessionEvent));
    source.addEventListener("detached", frame(this.handlers.onDetached));
    source.addEventListener(
      "ping",
      frame(() => {
        this.pings += 1;
      }),
    );
    // "error" is both a session event type of the protocol (a MessageEvent with data) and
    // EventSource's own failure notification (a plain Event): tell them apart.
    source.addEventListener("error", (event) => {
      if (typeof event.data === "string") frame(sessionEvent)(event);
      else if (source === this.source) this.failed(source);
    });
  }

  failed(source) {
    // EventSource shows no status code: every failure is "no code", which is transient.
    const now = performance.now();
    const { decision, attempt, delayMs } = this.budget.closed(now, null, Math.random());
    if (decision !== "retry") {
      this.stop();
      this.handlers.onStatus("offline");
      return;
    }
    this.handlers.onStatus("reconnecting");
    // The browser's own reconnect (with Last-Event-ID) is the first attempt.
    if (source.readyState === EventSource.CONNECTING && attempt === 1) return;
    const refused = source.readyState === EventSource.CLOSED;
    this.stop();
    this.retryInMs = delayMs;
    this.timer = setTimeout(() => {
      this.timer = null;
      // A refused stream may mean the login expired: that is not worth retrying.
      const check = refused ? this.handlers.checkAuth() : Promise.resolve(true);
      check.then((authorized) => {
        if (authorized) this.connect();
        else this.handlers.onStatus("signed-out");
      });
    }, delayMs);
  }

  /** A frame arrived (or a connection started): the stream is alive for another timeout. */
  heard() {
    this.lastFrameAt = performance.now();
    if (this.watchdog === null && this.idleTimeoutMs > 0) this.armWatchdog(this.idleTimeoutMs);
  }

  armWatchdog(delayMs) {
    // Re-armed lazily, not on every frame: cheap on a busy stream.
    this.watchdog = setTimeout(() => {
      this.watchdog = null;
      const source = this.source;
      if (source === null) return;
      const silentMs = performance.now() - this.lastFrameAt;
      if (silentMs < this.idleTimeoutMs) {
        this.armWatchdog(this.idleTimeoutMs - silentMs);
        return;
      }
      console.info(`chatbridge: no frame for ${Math.round(silentMs)} ms; reconnecting`);
      this.idleDrops += 1;
      this.failed(source);
    }, delayMs);
  }

  stop() {
    if (this.source) this.source.close();
    this.source = null;
    clearTimeout(this.timer);
    this.timer = null;
    clearTimeout(this.watchdog);
    this.watchdog = null;
  }

  /** Start over with a fresh attempt budget (the Reconnect button, the browser back online). */
  reconnect() {
    this.budget.reset();
    this.connect();
  }

  get givenUp() {
    return this.source === null && this.timer === null;
  }
}
