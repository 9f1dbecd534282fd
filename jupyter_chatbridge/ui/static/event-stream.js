// The tab's SSE stream (chatbridge/api/events?cid=…): it carries every session event the
// page shows. There is one per tab, bound to the tab's stable cid, so the server keeps the
// tab's watches across reconnects; the browser's native reconnect sends Last-Event-ID and
// the server replays exactly the frames that were missed.

import { MAX_RECONNECT_ATTEMPTS, backoffDelay } from "./policy.js";

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
 * reconnects itself, passing the last frame id as `lastEventId`. At most
 * MAX_RECONNECT_ATTEMPTS attempts without a welcome, then "offline" until asked again.
 */
export class EventStream {
  constructor(url, cid, handlers) {
    this.url = url;
    this.cid = cid;
    this.handlers = handlers;
    this.source = null;
    this.failures = 0;
    this.lastFrameId = null;
    this.timer = null;
  }

  connect() {
    clearTimeout(this.timer);
    this.timer = null;
    if (this.source) this.source.close();
    const query = new URLSearchParams({ cid: this.cid });
    if (this.lastFrameId !== null) query.set("lastEventId", String(this.lastFrameId));
    const source = new EventSource(`${this.url}?${query}`);
    this.source = source;
    const frame = (handle) => (event) => {
      // Frames of a stream this object already replaced are stale.
      if (source !== this.source) return;
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
        this.failures = 0;
        this.handlers.onWelcome(welcome);
      }),
    );
    for (const type of SESSION_EVENT_TYPES) {
      source.addEventListener(type, frame(this.handlers.onSessionEvent));
    }
    source.addEventListener("detached", frame(this.handlers.onDetached));
    // "error" is both a session event type of the protocol (a MessageEvent with data) and
    // EventSource's own failure notification (a plain Event): tell them apart.
    source.addEventListener("error", (event) => {
      if (typeof event.data === "string") frame(this.handlers.onSessionEvent)(event);
      else if (source === this.source) this.failed(source);
    });
  }

  failed(source) {
    this.failures += 1;
    if (this.failures > MAX_RECONNECT_ATTEMPTS) {
      this.stop();
      this.handlers.onStatus("offline");
      return;
    }
    this.handlers.onStatus("reconnecting");
    if (source.readyState === EventSource.CONNECTING && this.failures === 1) return; // native
    const refused = source.readyState === EventSource.CLOSED;
    this.stop();
    this.timer = setTimeout(() => {
      this.timer = null;
      // A refused stream may mean the login expired: that is not worth retrying.
      const check = refused ? this.handlers.checkAuth() : Promise.resolve(true);
      check.then((authorized) => {
        if (authorized) this.connect();
        else this.handlers.onStatus("signed-out");
      });
    }, backoffDelay(this.failures));
  }

  stop() {
    if (this.source) this.source.close();
    this.source = null;
    clearTimeout(this.timer);
    this.timer = null;
  }

  /** Start over with a fresh attempt budget (the Reconnect button, the browser back online). */
  reconnect() {
    this.failures = 0;
    this.connect();
  }

  get givenUp() {
    return this.source === null && this.timer === null;
  }
}
