// The session WebSocket (chatbridge/api/sessions/{id}/ws): the live view of the open
// session, there for its close code. A browser never sees the HTTP status of a failed
// EventSource or WebSocket upgrade, but it does see a close code, and the server closes
// 4404 at once for a session that does not exist or was just deleted: that is how the page
// knows "session no longer exists" immediately instead of retrying blind. The socket's own
// event frames are ignored: the same events already arrive over SSE.

import {
  MAX_RECONNECT_ATTEMPTS,
  STABLE_CONNECTION_MS,
  backoffDelay,
  classify,
} from "./policy.js";


/**
 * The live view of one session. A permanent close (4404 above all) ends it at once and is
 * reported; a transient one (1006, 1001, 1011…) is retried with backoff, at most
 * MAX_RECONNECT_ATTEMPTS times.
 */
export class LiveSocket {
  constructor(url, onState) {
    this.url = url;
    this.onState = onState;
    this.socket = null;
    this.timer = null;
    this.attempts = 0;
    this.opened = 0; // sockets created, for tests
  }

  open() {
    clearTimeout(this.timer);
    this.timer = null;
    this.attempts += 1;
    this.opened += 1;
    const socket = new WebSocket(this.url);
    const started = performance.now();
    let openedAt = null;
    this.socket = socket;
    socket.addEventListener("open", () => {
      if (socket !== this.socket) return;
      openedAt = performance.now();
      this.onState({ state: "live" });
    });
    socket.addEventListener("close", (event) => {
      // A socket we closed or replaced must not steer the current one.
      if (socket !== this.socket) return;
      this.socket = null;
      const now = performance.now();
      if (openedAt !== null && now - openedAt >= STABLE_CONNECTION_MS) this.attempts = 0;
      const report = { code: event.code, reason: event.reason, afterMs: now - started };
      if (classify(event.code) === "permanent") {
        this.onState({ ...report, state: event.code === 4404 ? "gone" : "refused" });
      } else if (this.attempts >= MAX_RECONNECT_ATTEMPTS) {
        this.onState({ ...report, state: "lost" });
      } else {
        const delay = backoffDelay(this.attempts);
        this.onState({ ...report, state: "reconnecting", attempt: this.attempts + 1, delay });
        this.timer = setTimeout(() => this.open(), delay);
      }
    });
  }

  close() {
    const socket = this.socket;
    this.socket = null;
    clearTimeout(this.timer);
    this.timer = null;
    if (socket) socket.close(1000, "closed by the page");
  }

  get reconnectPending() {
    return this.timer !== null;
  }
}

