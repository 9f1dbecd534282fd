// The browser client of jupyter_chatbridge (PROTOCOL.md, version 1): one plain ES module,
// no build step. Served by the extension at {base_url}static/jupyter_chatbridge/ and loaded
// by the page at {base_url}chatbridge/, which passes base_url and the XSRF token in data
// attributes of <body>: every URL below is computed from that base_url.
//
// Who carries what:
// - The SSE stream (chatbridge/api/events?cid=…) carries every session event the page
//   shows. There is one per tab, bound to the tab's stable cid, so the server keeps the
//   tab's watches across reconnects; the browser's native reconnect sends Last-Event-ID
//   and the server replays exactly the frames that were missed. One ordered channel
//   feeding the view keeps "each event once, in seq order" a simple cursor per session.
// - The session WebSocket (chatbridge/api/sessions/{id}/ws) is the live view of the open
//   session: its liveness. A browser never sees the HTTP status of a failed request on an
//   EventSource or a WebSocket upgrade, but it does see a close code, and the server closes
//   4404 at once for a session that does not exist or was just deleted. That close is how
//   the page knows "session no longer exists" immediately instead of retrying blind. The
//   socket's own event frames are ignored: the same events already arrive over SSE.
//
// The policy pieces (classify, backoffDelay, retryAfterMs, tabCid, Outbox) are small,
// exported and free of DOM access; ChatPage at the bottom is the glue to the page.

// -- policy ---------------------------------------------------------------------------------

export const MAX_RECONNECT_ATTEMPTS = 6;
export const BACKOFF_BASE_MS = 1000;
export const BACKOFF_CAP_MS = 30000;
export const RETRY_DELAY_MS = 3000;
export const MAX_SEND_RETRIES = 3;
export const MAX_QUEUED_SENDS = 100;
export const REQUEST_TIMEOUT_MS = 15000;
// A socket that stayed open this long counts as a successful connection and resets the
// attempt budget; one that is accepted and dropped at once does not, so a flapping server
// cannot keep the page retrying forever.
export const STABLE_CONNECTION_MS = 5000;

const PERMANENT_CLOSE_CODES = new Set([4404, 4400, 4401, 4403]);
// Client errors that mean "not now" rather than "never": time-out, too early, busy.
const TRANSIENT_CLIENT_ERRORS = new Set([408, 425, 429]);

/**
 * "permanent" or "transient" for a WebSocket close code or an HTTP status; null stands for
 * a network error or a time-out, which are transient.
 */
export function classify(code) {
  if (code === null || code === undefined) return "transient";
  if (PERMANENT_CLOSE_CODES.has(code)) return "permanent";
  if (code >= 400 && code <= 499 && !TRANSIENT_CLIENT_ERRORS.has(code)) return "permanent";
  return "transient";
}

/**
 * Milliseconds to wait before reconnect attempt `attempt` (1-based): the nominal
 * min(cap, base * 2^(attempt-1)) scaled uniformly into [0.5, 1] ("equal jitter"), so clients
 * that dropped together spread out. The same schedule as the Python ReconnectPolicy.
 */
export function backoffDelay(attempt, random = Math.random) {
  const exponent = Math.min(Math.max(attempt, 1) - 1, 30);
  const nominal = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** exponent);
  return nominal * (0.5 + 0.5 * Math.min(1, Math.max(0, random())));
}

/** A Retry-After header (delta seconds or an HTTP date) in milliseconds, or null. */
export function retryAfterMs(value, now = Date.now()) {
  if (!value) return null;
  if (/^\s*\d+\s*$/.test(value)) return Number(value) * 1000;
  const date = Date.parse(value);
  return Number.isNaN(date) ? null : Math.max(0, date - now);
}

const CID_PATTERN = /^cid-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** A random canonical UUID; crypto.randomUUID only exists in secure contexts (https, localhost). */
export function newUuid() {
  if (typeof crypto.randomUUID === "function") return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40; // version 4
  b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
  const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

let memoryCid = null;

/**
 * The tab's stable connection id, made once. sessionStorage keeps it per tab and across
 * reloads; where storage throws (private browsing, storage disabled) it lives in memory
 * and lasts as long as the page.
 */
export function tabCid(key, getStorage = () => window.sessionStorage) {
  try {
    const storage = getStorage();
    const known = storage.getItem(key);
    if (known && CID_PATTERN.test(known)) return known.toLowerCase();
    const cid = `cid-${newUuid()}`;
    storage.setItem(key, cid);
    return cid;
  } catch {
    memoryCid = memoryCid || `cid-${newUuid()}`;
    return memoryCid;
  }
}

/**
 * Keeps the cid one per tab when a tab is duplicated: the browser copies sessionStorage,
 * cid included, into the new tab, and two tabs on one cid would take the connection from
 * each other forever. Each page announces its cid on a BroadcastChannel; a page that
 * hears its own cid from another tab answers "taken", and the newcomer makes a fresh cid.
 * `settled` resolves when the page may connect: after `waitMs` without an answer, or
 * once a clash was handled (an answer arriving later still calls `onClash`).
 */
export class CidGuard {
  constructor(channelName, getCid, onClash, waitMs = 100) {
    this.tab = newUuid();
    let channel = null;
    try {
      channel = new BroadcastChannel(channelName);
    } catch {
      this.settled = Promise.resolve(); // no BroadcastChannel: nothing to compare with
      return;
    }
    let settle;
    this.settled = new Promise((resolve) => {
      settle = resolve;
      setTimeout(resolve, waitMs);
    });
    channel.addEventListener("message", ({ data }) => {
      if (!data || data.cid !== getCid()) return;
      if (data.type === "hello" && data.tab !== this.tab) {
        channel.postMessage({ type: "taken", cid: data.cid, to: data.tab });
      } else if (data.type === "taken" && data.to === this.tab) {
        onClash();
        settle();
      }
    });
    channel.postMessage({ type: "hello", cid: getCid(), tab: this.tab });
    this.channel = channel;
  }
}

function storageGet(key) {
  try {
    return window.sessionStorage.getItem(key);
  } catch {
    return null;
  }
}

function storageSet(key, value) {
  try {
    if (value === null) window.sessionStorage.removeItem(key);
    else window.sessionStorage.setItem(key, value);
  } catch {
    // Private browsing: the page simply forgets on reload.
  }
}

// -- send outbox ------------------------------------------------------------------------------

export class OutboxFull extends Error {}

/**
 * The contract's send outbox: messages go out in the order they were queued, one request
 * at a time, each keeping its clientMsgId across retries (the server deduplicates, so a
 * retry after a lost answer is harmless). 429, 5xx, network errors and time-outs are
 * retried after `retryDelay` (or Retry-After) up to `maxRetries` times, while the stream
 * stays connected or not; other 4xx fail at once. A message waiting for its retry holds
 * back the ones behind it: ordering beats latency.
 *
 * `post(message)` performs one send and resolves to {status, body, retryAfter} or throws
 * on a network error or time-out. `listener(type, message, details)` gets
 * "send_pending", "send_failed" ({willRetry, attempt, status, error, retryIn}) and
 * "send_accepted" ({seq, duplicate, evidence}).
 */
export class Outbox {
  constructor({
    post,
    listener,
    retryDelay = RETRY_DELAY_MS,
    maxRetries = MAX_SEND_RETRIES,
    maxQueued = MAX_QUEUED_SENDS,
  }) {
    this.post = post;
    this.listener = listener;
    this.retryDelay = retryDelay;
    this.maxRetries = maxRetries;
    this.maxQueued = maxQueued;
    this.queue = []; // the head is in flight or waiting for its retry
    this.failed = new Map(); // clientMsgId -> message, for the Retry button
    this.running = false;
    this.waiting = null; // {message, wake, timer} while the head waits for a retry
  }

  /** Messages of a session not yet accepted nor finally failed. */
  pendingFor(sessionId) {
    return this.queue.filter((m) => m.sessionId === sessionId).length;
  }

  /** Queue a message; throws OutboxFull when `maxQueued` are already waiting. */
  enqueue(sessionId, text, clientMsgId = `m-${newUuid()}`) {
    this.admit({ sessionId, clientMsgId, text, posts: 0, confirmed: false });
    return clientMsgId;
  }

  /** Send a finally failed message again: same clientMsgId, a fresh retry budget. */
  retry(clientMsgId) {
    const old = this.failed.get(clientMsgId);
    if (!old) return;
    this.failed.delete(clientMsgId);
    try {
      this.admit({ ...old, posts: 0, confirmed: false });
    } catch (error) {
      this.failed.set(clientMsgId, old); // a full outbox must leave the Retry button working
      throw error;
    }
  }

  /**
   * Evidence that the server has this message (its user_message event). A head waiting
   * for its retry is settled at once instead of being posted again; a remembered final
   * failure is forgotten. Returns true if the outbox knew the message.
   */
  confirm(clientMsgId) {
    if (this.failed.delete(clientMsgId)) return true;
    const message = this.queue.find((m) => m.clientMsgId === clientMsgId);
    if (!message) return false;
    message.confirmed = true;
    if (this.waiting && this.waiting.message === message) this.waiting.wake();
    return true;
  }

  admit(message) {
    if (this.queue.length >= this.maxQueued) {
      throw new OutboxFull(
        `${this.maxQueued} messages are already waiting to be delivered; ` +
          "wait for them before sending more",
      );
    }
    this.queue.push(message);
    this.emit("send_pending", message, {});
    this.pump();
  }

  emit(type, message, details) {
    // A broken UI callback must not stop delivery of the messages behind it.
    try {
      this.listener(type, message, details);
    } catch (error) {
      console.error("chatbridge: outbox listener failed", error);
    }
  }

  // The only loop that posts: `running` makes a second call a no-op, so there is never
  // more than one request in flight and never two flushes racing each other.
  async pump() {
    if (this.running) return;
    this.running = true;
    try {
      while (this.queue.length > 0) {
        const message = this.queue[0];
        let outcome;
        if (message.confirmed) {
          outcome = { accepted: true, evidence: true };
        } else {
          message.posts += 1;
          outcome = await this.attempt(message);
          // The answer was lost, but its user_message arrived meanwhile: it is delivered.
          if (!outcome.accepted && message.confirmed) outcome = { accepted: true, evidence: true };
        }
        if (outcome.accepted) {
          this.queue.shift();
          this.emit("send_accepted", message, outcome);
          continue;
        }
        const willRetry = outcome.retryable && message.posts <= this.maxRetries;
        const details = {
          willRetry,
          attempt: message.posts,
          status: outcome.status,
          error: outcome.error,
        };
        if (!willRetry) {
          this.queue.shift();
          if (outcome.retryable) this.failed.set(message.clientMsgId, message);
          this.emit("send_failed", message, details);
          continue;
        }
        const delay = outcome.retryAfter ?? this.retryDelay;
        this.emit("send_failed", message, { ...details, retryIn: delay });
        await this.wait(message, delay);
      }
    } finally {
      this.running = false;
    }
  }

  async attempt(message) {
    let response;
    try {
      response = await this.post(message);
    } catch (error) {
      // No status at all: a network error or our time-out. Transient.
      return { accepted: false, retryable: true, status: null, error: describeError(error) };
    }
    const { status, body } = response;
    if (status >= 200 && status <= 299) {
      return { accepted: true, seq: body && body.seq, duplicate: Boolean(body && body.duplicate) };
    }
    const text = body && body.error ? `${body.error}${body.code ? ` (${body.code})` : ""}` : "";
    return {
      accepted: false,
      retryable: classify(status) === "transient",
      status,
      error: text || `HTTP ${status}`,
      retryAfter: response.retryAfter,
    };
  }

  wait(message, delay) {
    return new Promise((resolve) => {
      const wake = () => {
        clearTimeout(this.waiting.timer);
        this.waiting = null;
        resolve();
      };
      this.waiting = { message, wake, timer: setTimeout(wake, delay) };
    });
  }
}

function describeError(error) {
  if (error && error.name === "AbortError") return "no answer in time";
  return (error && error.message) || "network error";
}

// -- one session's view: events exactly once, in seq order ------------------------------------

/**
 * The events of one session as the page has them. `offer` takes events in any order and
 * any number of times (a replay after reconnect, a watch replay racing live frames, a
 * history fill) and applies each seq once, in order; anything past a hole waits in
 * `pending` until the hole is filled.
 */
export class SessionView {
  constructor(sessionId) {
    this.sessionId = sessionId;
    this.lastSeq = 0;
    this.knownLastSeq = 0; // the highest seq the server said exists
    this.pending = new Map();
    this.items = [];
    this.answers = new Map(); // messageId -> assistant item
    this.unanswered = []; // seqs of user messages whose answer has not ended
    this.ended = false;
    this.applied = []; // every applied seq, in order (for tests and debugging)
    this.duplicates = 0;
  }

  /** True while the agent owes an answer: "thinking…". */
  get busy() {
    return this.unanswered.length > 0 || [...this.answers.values()].some((a) => !a.done);
  }

  /** True while the page knows of events it has not applied yet. */
  get incomplete() {
    return this.pending.size > 0 || this.lastSeq < this.knownLastSeq;
  }

  /** Offer one event; returns the events it let through, in order. */
  offer(event) {
    const { seq } = event;
    if (!Number.isInteger(seq) || seq <= this.lastSeq || this.pending.has(seq)) {
      this.duplicates += 1;
      return [];
    }
    this.pending.set(seq, event);
    this.knownLastSeq = Math.max(this.knownLastSeq, seq);
    const applied = [];
    while (this.pending.has(this.lastSeq + 1)) {
      const next = this.pending.get(this.lastSeq + 1);
      this.pending.delete(this.lastSeq + 1);
      this.lastSeq += 1;
      this.apply(next);
      applied.push(next);
    }
    return applied;
  }

  /** The server trimmed history before `seq`: continue from there. */
  skipTo(seq) {
    if (seq <= this.lastSeq) return;
    this.lastSeq = seq;
    for (const held of [...this.pending.keys()]) if (held <= seq) this.pending.delete(held);
    this.items.push({ kind: "system", text: "earlier messages were trimmed from the history" });
  }

  apply(event) {
    this.applied.push(event.seq);
    switch (event.type) {
      case "user_message":
        this.items.push({
          kind: "user",
          seq: event.seq,
          clientMsgId: event.clientMsgId,
          text: event.text,
        });
        this.unanswered.push(event.seq);
        break;
      case "message_start": {
        const item = {
          kind: "assistant",
          messageId: event.messageId,
          replyTo: event.replyTo,
          text: "",
          done: false,
          error: null,
        };
        this.items.push(item);
        this.answers.set(event.messageId, item);
        break;
      }
      case "block_delta":
        this.answer(event.messageId).text += event.text;
        break;
      case "message_end": {
        const item = this.answer(event.messageId);
        item.done = true;
        // Answers come one at a time in seq order, so without replyTo it is the oldest.
        const index = this.unanswered.indexOf(item.replyTo);
        this.unanswered.splice(index >= 0 ? index : 0, 1);
        break;
      }
      case "error":
        if (event.messageId && this.answers.has(event.messageId)) {
          this.answers.get(event.messageId).error = event.message;
        } else {
          this.items.push({ kind: "error", text: event.message });
        }
        break;
      case "session_ended":
        this.ended = true;
        this.unanswered = [];
        for (const answer of this.answers.values()) answer.done = true;
        this.items.push({ kind: "system", text: "session ended" });
        break;
      default:
        break; // a newer server's event type: ignore it
    }
  }

  answer(messageId) {
    let item = this.answers.get(messageId);
    if (!item) {
      item = { kind: "assistant", messageId, text: "", done: false, error: null };
      this.items.push(item);
      this.answers.set(messageId, item);
    }
    return item;
  }
}

// -- the SSE stream -----------------------------------------------------------------------------

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
class EventStream {
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

// -- the session WebSocket (liveness) ----------------------------------------------------------

/**
 * The live view of one session. A permanent close (4404 above all) ends it at once and is
 * reported; a transient one (1006, 1001, 1011…) is retried with backoff, at most
 * MAX_RECONNECT_ATTEMPTS times.
 */
class LiveSocket {
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

// -- the page -------------------------------------------------------------------------------------

const SESSION_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
const FILL_GRACE_MS = 500;

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function positiveIntParam(params, name, fallback) {
  const value = Number(params.get(name));
  return Number.isInteger(value) && value > 0 ? value : fallback;
}

const DELIVERY_LABELS = {
  sending: "sending…",
  retrying: "delivery delayed, retrying…",
  delivered: "delivered",
  failed: "not delivered",
};

class ChatPage {
  constructor(body) {
    this.baseUrl = body.dataset.baseUrl || "/";
    this.xsrf = body.dataset.xsrfToken || "";
    this.api = `${this.baseUrl}chatbridge/api/`;
    this.storageKey = `chatbridge:${this.baseUrl}`;
    const params = new URLSearchParams(window.location.search);
    this.cid = tabCid(`${this.storageKey}:cid`);
    this.cidGuard = null;
    this.cidRenewals = 0;
    this.connectionId = null;
    this.epoch = null;
    this.status = "connecting";
    this.welcomes = [];
    this.sessions = [];
    this.view = null;
    this.live = null;
    this.liveState = null;
    this.gone = null;
    this.delivery = new Map(); // clientMsgId -> {sessionId, text, state, note, history, canRetry}
    this.syncGeneration = 0;
    this.fillTimer = null;
    this.filling = false;
    this.renderQueued = false;
    this.errors = new Map(); // operation -> message
    this.pickerKey = null;
    this.$ = (id) => document.getElementById(id);
    this.outbox = new Outbox({
      post: (message) => this.postSend(message),
      listener: (type, message, details) => this.onOutbox(type, message, details),
      // ?retryDelay=ms shortens the 3 s retry delay (the browser tests use it).
      retryDelay: positiveIntParam(params, "retryDelay", RETRY_DELAY_MS),
    });
    this.stream = new EventStream(`${this.api}events`, this.cid, {
      onWelcome: (welcome) => this.onWelcome(welcome),
      onSessionEvent: (event) => this.onSessionEvent(event),
      onDetached: () => {}, // the page watches but never drives a session
      onStatus: (status) => this.setStatus(status),
      checkAuth: () => this.checkAuth(),
    });
  }

  start() {
    this.$("cid").textContent = this.cid;
    this.$("composer").addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
    this.$("message").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        this.submit();
      }
    });
    this.$("session-select").addEventListener("change", (event) => {
      this.selectSession(event.target.value || null);
    });
    this.$("new-session").addEventListener("click", () => this.createSession());
    this.$("gone-new").addEventListener("click", () => this.createSession());
    this.$("gone-reconnect").addEventListener("click", () => {
      if (this.view) this.selectSession(this.view.sessionId, { force: true });
    });
    window.addEventListener("online", () => {
      if (this.stream.givenUp) this.stream.reconnect();
    });
    window.addEventListener("pagehide", () => {
      if (this.live) this.live.close();
    });
    window.addEventListener("pageshow", (event) => {
      // Back from the back/forward cache: the socket was closed on the way out.
      if (!event.persisted) return;
      this.stream.reconnect();
      if (this.view) this.selectSession(this.view.sessionId, { force: true });
    });
    this.cidGuard = new CidGuard(
      `chatbridge-cid:${this.baseUrl}`,
      () => this.cid,
      () => this.renewCid(),
    );
    this.cidGuard.settled.then(() => {
      if (this.stream.source === null && this.status === "connecting") this.stream.connect();
    });
    const fromHash = new URLSearchParams(window.location.hash.slice(1)).get("session");
    const initial = fromHash || storageGet(`${this.storageKey}:session`);
    this.selectSession(initial && SESSION_ID_PATTERN.test(initial) ? initial : null);
    this.loadSessions();
  }

  /** Another tab holds this cid (a duplicated tab): continue under a fresh one. */
  renewCid() {
    this.cid = `cid-${newUuid()}`;
    this.cidRenewals += 1;
    storageSet(`${this.storageKey}:cid`, this.cid);
    this.$("cid").textContent = this.cid;
    const started = this.stream.source !== null || this.stream.timer !== null;
    this.stream.cid = this.cid;
    this.stream.lastFrameId = null;
    // The next welcome is then this page's first on the new connection: it watches again.
    this.connectionId = null;
    this.epoch = null;
    if (started) this.stream.reconnect();
  }

  // -- HTTP ----------------------------------------------------------------------------------

  /** One REST call under cookie login: the XSRF header on every call, a time-out. */
  async request(method, path, body) {
    const headers = { "X-XSRFToken": this.xsrf };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (this.connectionId) headers["X-Connection-ID"] = this.connectionId;
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), REQUEST_TIMEOUT_MS);
    try {
      const response = await fetch(this.api + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        credentials: "same-origin",
        cache: "no-store",
        signal: controller.signal,
      });
      const text = await response.text();
      let json = null;
      try {
        json = text ? JSON.parse(text) : null;
      } catch {
        json = null;
      }
      return {
        status: response.status,
        body: json,
        retryAfter: retryAfterMs(response.headers.get("Retry-After")),
      };
    } finally {
      clearTimeout(timer);
    }
  }

  postSend(message) {
    return this.request("POST", "send", {
      sessionId: message.sessionId,
      clientMsgId: message.clientMsgId,
      text: message.text,
    });
  }

  async checkAuth() {
    try {
      const { status } = await this.request("GET", "sessions");
      return status !== 401 && status !== 403;
    } catch {
      return true; // unreachable is not unauthorized
    }
  }

  // -- stream ----------------------------------------------------------------------------------

  onWelcome(welcome) {
    const epochChanged = this.epoch !== null && this.epoch !== welcome.epoch;
    const firstOfPage = this.epoch === null;
    this.connectionId = welcome.connectionId;
    this.epoch = welcome.epoch;
    this.welcomes.push(welcome);
    if (this.welcomes.length > 20) this.welcomes.shift();
    this.setStatus("connected");
    // Re-watch when the server cannot have replayed what this page is missing: it lost our
    // connection (resumed false), dropped frames (gap), restarted (epoch), or this page is
    // new (a reload keeps the cid, but not the events the old page had).
    if (welcome.gap || !welcome.resumed || epochChanged || firstOfPage) this.sync();
    if (epochChanged) this.loadSessions();
  }

  onSessionEvent(event) {
    const view = this.view;
    if (!view || event.sessionId !== view.sessionId) return;
    for (const applied of view.offer(event)) {
      if (applied.type === "user_message" && applied.clientMsgId) {
        // Evidence about this one message: it is in the session, whatever its POST said.
        this.outbox.confirm(applied.clientMsgId);
        this.markDelivery(applied.clientMsgId, "delivered");
      }
      if (applied.type === "session_ended") this.sessionGone({ source: "session_ended" });
    }
    if (view.incomplete) this.scheduleFill();
    this.render();
  }

  setStatus(status) {
    this.status = status;
    this.render();
  }

  /** Watch the open session from the last seq this page has (the server replays the rest). */
  async sync() {
    const view = this.view;
    if (!view || !this.connectionId || this.gone) return;
    const generation = ++this.syncGeneration;
    for (let attempt = 1; ; attempt += 1) {
      let result;
      try {
        result = await this.request("POST", "watch", {
          sessionId: view.sessionId,
          afterSeq: view.lastSeq,
        });
      } catch {
        result = { status: null, body: null };
      }
      if (view !== this.view || generation !== this.syncGeneration) return; // superseded
      const code = result.body && result.body.code;
      if (result.status === 200) {
        this.setError("watch", null);
        view.knownLastSeq = Math.max(view.knownLastSeq, result.body.lastSeq || 0);
        if (view.incomplete) this.scheduleFill();
        return;
      }
      if (code === "session_unknown") {
        this.sessionGone({ source: "watch" });
        return;
      }
      // The stream was replaced under us: its welcome watches again.
      if (code === "connection_unknown") return;
      if (classify(result.status) === "permanent" || attempt >= MAX_RECONNECT_ATTEMPTS) {
        const why = (result.body && result.body.error) || result.status || "network error";
        this.setError("watch", `could not watch the session: ${why}`);
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, backoffDelay(attempt)));
    }
  }

  // Replayed frames may still be on their way when a hole shows up, so wait a moment
  // before asking the session's history for what is missing.
  scheduleFill() {
    if (this.fillTimer !== null || this.filling) return;
    this.fillTimer = setTimeout(() => {
      this.fillTimer = null;
      this.fill();
    }, FILL_GRACE_MS);
  }

  async fill() {
    const view = this.view;
    if (!view || !view.incomplete || this.gone) return;
    this.filling = true;
    try {
      const path = `sessions/${encodeURIComponent(view.sessionId)}/events?after=${view.lastSeq}`;
      const { status, body } = await this.request("GET", path);
      if (view !== this.view || status !== 200) return;
      const events = body.events || [];
      if (events.length > 0 && events[0].seq > view.lastSeq + 1) view.skipTo(events[0].seq - 1);
      for (const event of events) this.onSessionEvent(event);
    } catch {
      // The next gap or welcome tries again.
    } finally {
      this.filling = false;
    }
  }

  // -- sessions -----------------------------------------------------------------------------------

  async loadSessions() {
    try {
      const { status, body } = await this.request("GET", "sessions");
      if (status === 200) this.sessions = body.sessions.map((s) => s.sessionId).sort();
      else if (status === 403) this.setStatus("signed-out");
    } catch {
      // Offline: keep the list we have.
    }
    this.render();
  }

  async createSession() {
    const input = this.$("new-session-name");
    const name = input.value.trim();
    if (name && !SESSION_ID_PATTERN.test(name)) {
      this.setError("create", "a session name is letters, digits, '.', '_' or '-' (at most 64)");
      return;
    }
    try {
      const { status, body } = await this.request("POST", "sessions", name ? { sessionId: name } : {});
      if (status !== 201) {
        const why = (body && body.error) || `HTTP ${status}`;
        this.setError("create", `could not create the session: ${why}`);
        return;
      }
      input.value = "";
      this.setError("create", null);
      await this.loadSessions();
      this.selectSession(body.sessionId, { force: true });
    } catch {
      this.setError("create", "could not create the session: the server is unreachable");
    }
  }

  selectSession(sessionId, { force = false } = {}) {
    const previous = this.view ? this.view.sessionId : null;
    if (previous === sessionId && !force) return;
    if (this.live) this.live.close();
    this.live = null;
    this.liveState = null;
    this.gone = null;
    clearTimeout(this.fillTimer);
    this.fillTimer = null;
    this.view = sessionId ? new SessionView(sessionId) : null;
    storageSet(`${this.storageKey}:session`, sessionId);
    const url = new URL(window.location.href);
    url.hash = sessionId ? `session=${encodeURIComponent(sessionId)}` : "";
    window.history.replaceState(null, "", url);
    if (previous && previous !== sessionId && this.connectionId) {
      this.request("POST", "unwatch", { sessionId: previous }).catch(() => {});
    }
    if (sessionId) {
      const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
      const path = `${this.api}sessions/${encodeURIComponent(sessionId)}/ws`;
      this.live = new LiveSocket(`${scheme}//${window.location.host}${path}`, (state) =>
        this.onLive(state),
      );
      this.live.open();
      this.sync();
    }
    this.render();
  }

  onLive(state) {
    this.liveState = state;
    if (state.state === "gone") this.sessionGone(state);
    this.render();
  }

  /** The open session does not exist (any more): stop, say so, offer the way out. */
  sessionGone(evidence) {
    if (!this.view) return;
    this.gone = { ...this.gone, ...evidence };
    if (evidence.state !== "gone" && this.live) {
      // Not from the socket: the socket's own 4404 follows, or we stop it here.
      if (!this.live.socket) this.live.close();
    }
    this.loadSessions();
    this.render();
  }

  // -- sending ----------------------------------------------------------------------------------

  submit() {
    const box = this.$("message");
    const text = box.value.trim();
    if (!text || !this.view || this.gone) return;
    try {
      this.outbox.enqueue(this.view.sessionId, text);
    } catch (error) {
      if (!(error instanceof OutboxFull)) throw error;
      this.showComposerError(`Not sent: ${error.message}.`);
      return;
    }
    this.showComposerError(null);
    box.value = "";
  }

  /** Send programmatically (the console, the tests): what the composer does. */
  send(text) {
    this.$("message").value = text;
    this.submit();
  }

  onOutbox(type, message, details) {
    const id = message.clientMsgId;
    if (type === "send_pending") {
      const known = this.delivery.get(id);
      const entry = known || { sessionId: message.sessionId, text: message.text, history: [] };
      this.delivery.set(id, entry);
      this.markDelivery(id, "sending");
    } else if (type === "send_accepted") {
      this.markDelivery(id, "delivered");
    } else if (details.willRetry) {
      const why = details.status ? `HTTP ${details.status}` : details.error;
      this.markDelivery(id, "retrying", `attempt ${details.attempt} failed (${why}); retrying`);
    } else {
      const why = details.error || `HTTP ${details.status}`;
      const note = details.attempt > 1 ? `${details.attempt} attempts; last: ${why}` : why;
      this.markDelivery(id, "failed", note, { canRetry: this.outbox.failed.has(id) });
    }
  }

  // A message's warning changes only through events about that message: its own outbox
  // events or its user_message. Once delivered it stays delivered.
  markDelivery(clientMsgId, state, note = "", { canRetry = false } = {}) {
    const entry = this.delivery.get(clientMsgId);
    if (!entry) return;
    if (entry.state === "delivered" && state !== "delivered") return;
    if (entry.state !== state) entry.history.push(state);
    Object.assign(entry, { state, note, canRetry });
    this.render();
  }

  retrySend(clientMsgId) {
    try {
      this.outbox.retry(clientMsgId);
    } catch (error) {
      if (!(error instanceof OutboxFull)) throw error;
      this.showComposerError(`Not sent: ${error.message}.`);
    }
  }

  // -- rendering ----------------------------------------------------------------------------------

  // Each error belongs to one operation and is cleared by that operation's next success,
  // never by something unrelated.
  setError(kind, text) {
    if (text) this.errors.set(kind, text);
    else this.errors.delete(kind);
    this.render();
  }

  showComposerError(text) {
    const node = this.$("composer-error");
    node.textContent = text || "";
    node.hidden = !text;
  }

  render() {
    if (this.renderQueued) return;
    this.renderQueued = true;
    queueMicrotask(() => {
      this.renderQueued = false;
      this.draw();
    });
  }

  draw() {
    const view = this.view;
    const labels = {
      connecting: "connecting…",
      connected: "connected",
      reconnecting: "reconnecting…",
      offline: "offline",
      "signed-out": "signed out: log in again",
    };
    const conn = this.$("conn-status");
    conn.dataset.state = this.status;
    conn.textContent = labels[this.status] || this.status;
    if (this.status === "offline" || this.status === "signed-out") {
      const again = element("button", "inline", this.status === "offline" ? "Reconnect" : "Log in");
      again.type = "button";
      again.addEventListener("click", () => {
        if (this.status === "offline") this.stream.reconnect();
        else window.location.assign(`${this.baseUrl}login?next=${encodeURIComponent(window.location.pathname)}`);
      });
      conn.append(" ", again);
    }

    this.drawPicker();

    const gone = this.$("session-gone");
    gone.hidden = !(view && this.gone);
    if (view && this.gone) {
      const g = this.gone;
      this.$("gone-detail").textContent = g.code
        ? `The live view closed with ${g.code} (${g.reason || "session unknown"}) after ${Math.round(g.afterMs)} ms.`
        : g.source === "session_ended"
          ? "It was ended."
          : "The server does not know it.";
    }

    const live = this.$("live-status");
    const ls = this.liveState;
    let liveText = "";
    if (view && !this.gone && ls) {
      if (ls.state === "reconnecting") {
        liveText = `live view lost (${ls.code}); reconnecting, attempt ${ls.attempt} of ${MAX_RECONNECT_ATTEMPTS}…`;
      } else if (ls.state === "lost") {
        liveText = `live view lost (${ls.code}) after ${MAX_RECONNECT_ATTEMPTS} attempts`;
      } else if (ls.state === "refused") {
        liveText = `live view refused (${ls.code} ${ls.reason || ""})`;
      }
    }
    const errors = [...this.errors.values()].join(" · ");
    if (errors) liveText = liveText ? `${liveText} · ${errors}` : errors;
    live.hidden = !liveText;
    live.textContent = liveText;
    if (ls && ls.state === "lost" && !this.gone) {
      const again = element("button", "inline", "Reconnect");
      again.type = "button";
      again.addEventListener("click", () => this.selectSession(view.sessionId, { force: true }));
      live.append(" ", again);
    }

    this.drawTranscript();

    const pending = view ? this.outbox.pendingFor(view.sessionId) : 0;
    this.$("thinking").hidden = !(view && !this.gone && (pending > 0 || view.busy));
    const usable = Boolean(view) && !this.gone;
    this.$("message").disabled = !usable;
    this.$("send").disabled = !usable;
  }

  drawPicker() {
    const select = this.$("session-select");
    const current = this.view ? this.view.sessionId : "";
    const ids = [...this.sessions];
    if (current && !ids.includes(current)) ids.push(current);
    // Rebuild only on change, so an open dropdown is not reset by every streamed event.
    const key = JSON.stringify([ids, this.sessions, current]);
    if (key === this.pickerKey) return;
    this.pickerKey = key;
    const options = [element("option", "", ids.length ? "— pick a session —" : "— no sessions yet —")];
    options[0].value = "";
    for (const id of ids) {
      const option = element("option", "", this.sessions.includes(id) ? id : `${id} (gone)`);
      option.value = id;
      options.push(option);
    }
    select.replaceChildren(...options);
    select.value = current;
  }

  drawTranscript() {
    const transcript = this.$("transcript");
    const view = this.view;
    const nearBottom =
      transcript.scrollHeight - transcript.scrollTop - transcript.clientHeight < 40;
    const nodes = [];
    if (!view) {
      nodes.push(element("p", "hint", "Pick a session or create one to start chatting."));
    } else {
      const seen = new Set();
      for (const item of view.items) {
        if (item.kind === "user") {
          seen.add(item.clientMsgId);
          nodes.push(this.userBubble(item.clientMsgId, item.text, item.seq, "delivered"));
        } else if (item.kind === "assistant") {
          const bubble = element("div", "msg assistant", item.text);
          bubble.dataset.messageId = item.messageId;
          bubble.dataset.done = String(item.done);
          if (item.error) bubble.append(element("div", "agent-error", item.error));
          nodes.push(bubble);
        } else {
          nodes.push(element("div", `msg ${item.kind}`, item.text));
        }
      }
      // This page's messages the session has not shown yet, in the order they were sent.
      for (const [id, entry] of this.delivery) {
        if (entry.sessionId === view.sessionId && !seen.has(id)) {
          nodes.push(this.userBubble(id, entry.text, null, entry.state));
        }
      }
      if (nodes.length === 0) nodes.push(element("p", "hint", "No messages yet."));
    }
    transcript.replaceChildren(...nodes);
    if (nearBottom) transcript.scrollTop = transcript.scrollHeight;
  }

  userBubble(clientMsgId, text, seq, fallbackState) {
    const entry = clientMsgId ? this.delivery.get(clientMsgId) : undefined;
    // The session's own user_message is proof of delivery whatever this page saw.
    const state = seq !== null ? "delivered" : entry ? entry.state : fallbackState;
    const bubble = element("div", "msg user");
    bubble.dataset.clientMsgId = clientMsgId || "";
    if (seq !== null) bubble.dataset.seq = String(seq);
    bubble.dataset.state = state;
    bubble.dataset.history = entry ? entry.history.join(" ") : "delivered";
    bubble.append(element("div", "text", text));
    const status = element("div", "delivery", DELIVERY_LABELS[state] || state);
    if (entry && entry.note && state !== "delivered") status.title = entry.note;
    if (state === "failed" && entry && entry.note) {
      status.append(element("span", "why", ` (${entry.note})`));
    }
    if (state === "failed" && entry && entry.canRetry) {
      const retry = element("button", "inline", "Retry");
      retry.type = "button";
      retry.addEventListener("click", () => this.retrySend(clientMsgId));
      status.append(" ", retry);
    }
    bubble.append(status);
    return bubble;
  }

  /** A snapshot of the client's state, for tests and the console. */
  debug() {
    const view = this.view;
    return {
      cid: this.cid,
      cidRenewals: this.cidRenewals,
      connectionId: this.connectionId,
      epoch: this.epoch,
      status: this.status,
      welcomes: this.welcomes.slice(),
      sessionId: view ? view.sessionId : null,
      lastSeq: view ? view.lastSeq : 0,
      applied: view ? view.applied.slice() : [],
      duplicatesDropped: view ? view.duplicates : 0,
      gone: this.gone,
      live: this.live
        ? {
            opened: this.live.opened,
            attempts: this.live.attempts,
            reconnectPending: this.live.reconnectPending,
            state: this.liveState && this.liveState.state,
          }
        : null,
      outbox: { queued: this.outbox.queue.length, failed: [...this.outbox.failed.keys()] },
      delivery: Object.fromEntries(
        [...this.delivery].map(([id, e]) => [id, { state: e.state, history: e.history.slice() }]),
      ),
    };
  }
}

if (typeof document !== "undefined" && document.body && document.body.dataset.baseUrl) {
  const page = new ChatPage(document.body);
  window.chatbridge = page;
  page.start();
}
