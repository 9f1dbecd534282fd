// The session WebSocket (chatbridge/api/sessions/{id}/ws): the live view of the open
// session, there for its close code. A browser never sees the HTTP status of a failed
// EventSource or WebSocket upgrade, but it does see a close code, and the server closes
// 4404 at once for a session that does not exist or was just deleted: that is how the page
// knows "session no longer exists" immediately instead of retrying blind. The socket's own
// event frames only prove it works: the same events already arrive over SSE. The page's
// Stop uses it too when it is open (actions.js).

import { ReconnectBudget } from "./policy.js";

/**
 * The live view of one session. A permanent close (4404 above all) ends it at once and is
 * reported; a transient one (1006, 1001, 1011…) is retried as the rules' reconnect budget
 * says. Only a socket that stayed open for the stability time, or delivered a frame,
 * refills the budget: one accepted and dropped at once does not, so a flapping server
 * cannot keep the page retrying forever.
 */
export class LiveSocket {
  constructor(rules, url, onState) {
    this.budget = new ReconnectBudget(rules);
    this.url = url;
    this.onState = onState;
    this.socket = null;
    this.timer = null;
    this.opened = 0; // sockets created, for tests
  }

  open() {
    clearTimeout(this.timer);
    this.timer = null;
    this.opened += 1;
    const socket = new WebSocket(this.url);
    const started = performance.now();
    this.socket = socket;
    socket.addEventListener("open", () => {
      if (socket !== this.socket) return;
      this.budget.opened(performance.now());
      this.onState({ state: "live" });
    });
    socket.addEventListener("message", () => {
      if (socket === this.socket) this.budget.liveEvent();
    });
    socket.addEventListener("close", (event) => {
      // A socket we closed or replaced must not steer the current one.
      if (socket !== this.socket) return;
      this.socket = null;
      const now = performance.now();
      const { decision, attempt, delayMs } = this.budget.closed(now, event.code, Math.random());
      const report = { code: event.code, reason: event.reason, afterMs: now - started };
      if (decision === "failed") {
        this.onState({ ...report, state: event.code === 4404 ? "gone" : "refused" });
      } else if (decision === "offline") {
        this.onState({ ...report, state: "lost", attempts: attempt });
      } else {
        this.onState({ ...report, state: "reconnecting", attempt, delay: delayMs });
        this.timer = setTimeout(() => this.open(), delayMs);
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

  /** The socket when it is open (frames can be sent on it), else null. */
  get openSocket() {
    const socket = this.socket;
    return socket && socket.readyState === WebSocket.OPEN ? socket : null;
  }

  get reconnectPending() {
    return this.timer !== null;
  }
}
