// The chat page: the glue between the DOM (render.js) and the pieces that hold the rules
// (outbox, transcript, event stream, live socket), each given the rules object of
// client_rules.json that page.py embeds. Its state is what render.js draws; Stop and
// Download are actions.js.

import { SessionActions } from "./actions.js";
import { apiRequest } from "./api.js";
import { EventStream } from "./event-stream.js";
import { CidGuard, newCid, storageGet, storageSet, tabCid } from "./ids.js";
import { LiveSocket } from "./live-socket.js";
import { Outbox, OutboxFull } from "./outbox.js";
import { backoffMs, classify, serverUnavailable } from "./policy.js";
import { debugSnapshot, drawPage } from "./render.js";
import { Transcript } from "./transcript.js";

const SESSION_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
const FILL_GRACE_MS = 500;
const RENDER_INTERVAL_MS = 50;

function positiveIntParam(params, name, fallback) {
  const value = Number(params.get(name));
  return Number.isInteger(value) && value > 0 ? value : fallback;
}

export class ChatPage {
  constructor(body, rules) {
    this.rules = rules;
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
    // The server's message while it says it cannot serve chat at all (rules.unavailable).
    this.unavailable = null;
    // clientMsgId -> {sessionId, text, history, last}: what this page sent, the delivery
    // states each message went through, and its last outbox event (for another view).
    this.delivery = new Map();
    this.syncGeneration = 0;
    this.fillTimer = null;
    this.filling = false;
    this.renderQueued = false;
    this.lastRender = null; // performance.now() of the last redraw
    this.errors = new Map(); // operation -> message
    this.pickerKey = null;
    this.$ = (id) => document.getElementById(id);
    this.actions = new SessionActions(this);
    this.outbox = new Outbox({
      rules,
      post: (message) => this.postSend(message),
      listener: (event) => this.onOutbox(event),
      // ?retryDelay=ms shortens the rules' retry delay (the browser tests use it).
      retryDelayMs: positiveIntParam(params, "retryDelay", undefined),
    });
    this.stream = new EventStream(rules, `${this.api}events`, this.cid, {
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
    this.actions.bind();
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
    this.cid = newCid();
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

  /** One REST call under cookie login (api.js), on this page's connection. */
  async request(method, path, body) {
    const target = { url: this.api, xsrf: this.xsrf, connectionId: this.connectionId };
    const result = await apiRequest(target, method, path, body);
    // Only a call that commits nothing tells: a send's 503 is a store failing to commit.
    if (method === "GET") this.noteUnavailable(result);
    return result;
  }

  /** A GET's answer is evidence about the whole server: unavailable, or serving again. */
  noteUnavailable({ status, body }) {
    const message = serverUnavailable(this.rules, status, body);
    if (message !== null) this.unavailable = message;
    else if (status >= 200 && status < 300) this.unavailable = null;
    else return;
    this.render();
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
    this.unavailable = null; // it serves a stream: it serves chat
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
    this.applyToView(view, { kind: "event", event });
    if (view.ended === "session_ended" && !this.gone) this.sessionGone({ source: "session_ended" });
    // Past a hole: the transcript holds the event, and history fills the hole.
    if (view.gap) this.scheduleFill();
  }

  // Every input reaches the transcript here, so the page sees what it changed: a message of
  // ours the session now shows is evidence for the outbox (whatever its POST said), and
  // each change of a message's delivery state is kept as its history.
  applyToView(view, input) {
    const touched = view.apply(input);
    for (const key of touched.keys) {
      const message = view.messages.get(key);
      const entry = message && message.delivery !== null && this.delivery.get(message.clientMsgId);
      if (!entry) continue;
      if (entry.history[entry.history.length - 1] !== message.delivery) {
        entry.history.push(message.delivery);
      }
      if (message.delivery === "delivered" && input.kind !== "outbox") {
        this.outbox.confirm(message.clientMsgId);
      }
    }
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
      const afterSeq = view.lastSeq ?? 0;
      try {
        result = await this.request("POST", "watch", { sessionId: view.sessionId, afterSeq });
      } catch {
        result = { status: null, body: null };
      }
      if (view !== this.view || generation !== this.syncGeneration) return; // superseded
      const code = result.body && result.body.code;
      if (result.status === 200) {
        this.setError("watch", null);
        const serverLastSeq = result.body.lastSeq;
        // Behind what we asked to watch from: the server rewound (it lost events we showed).
        // Only then, since live events may overtake this answer. Watch again from where
        // the server now is, so it replays what it numbered since.
        if (Number.isInteger(serverLastSeq) && serverLastSeq < afterSeq) {
          this.applyToView(view, { kind: "watched", lastSeq: serverLastSeq });
          this.sync();
          return;
        }
        if (view.gap) this.scheduleFill();
        return;
      }
      if (code === "session_unknown") {
        this.sessionGone({ source: "watch" });
        return;
      }
      // The stream was replaced under us: its welcome watches again.
      if (code === "connection_unknown") return;
      const permanent = classify(this.rules, result.status) === "permanent";
      if (permanent || attempt >= this.rules.reconnect.maxAttempts) {
        const why = (result.body && result.body.error) || result.status || "network error";
        this.setError("watch", `could not watch the session: ${why}`);
        return;
      }
      const delay = backoffMs(this.rules, attempt, Math.random());
      await new Promise((resolve) => setTimeout(resolve, delay));
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

  // The hole's history, fetched page by page up to the hole's end, goes to the transcript
  // as one "history" input: it applies what history has and skips what it no longer has.
  async fill() {
    const view = this.view;
    const gap = view && view.gap;
    if (!gap || this.gone) return;
    this.filling = true;
    try {
      const events = [];
      for (let after = gap.after; after < gap.before - 1; ) {
        const path = `sessions/${encodeURIComponent(view.sessionId)}/events?after=${after}`;
        const { status, body } = await this.request("GET", path);
        if (view !== this.view || status !== 200) return;
        const page = (body && body.events) || [];
        const last = page.length > 0 ? page[page.length - 1].seq : after;
        if (!(last > after)) break; // history has nothing more
        events.push(...page);
        after = last;
      }
      this.applyToView(view, { kind: "history", events });
      if (view.ended === "session_ended" && !this.gone) {
        this.sessionGone({ source: "session_ended" });
      }
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
      const wanted = name ? { sessionId: name } : {};
      const { status, body } = await this.request("POST", "sessions", wanted);
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
    this.actions.reset();
    clearTimeout(this.fillTimer);
    this.fillTimer = null;
    this.view = sessionId ? new Transcript(this.rules, sessionId) : null;
    // What this page sent to the session and the session has not shown it yet: the
    // session's replay shows the rest.
    for (const entry of this.delivery.values()) {
      if (this.view && entry.sessionId === sessionId && entry.last.type !== "send_accepted") {
        this.applyToView(this.view, { kind: "outbox", event: entry.last });
      }
    }
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
      const url = `${scheme}//${window.location.host}${path}`;
      this.live = new LiveSocket(this.rules, url, (state) => this.onLive(state));
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
    // The transcript's "lost": nothing is owed any more, so nothing is thinking.
    if (this.view.ended === null) {
      this.applyToView(this.view, { kind: "lost", reason: "session_unknown" });
    }
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

  // The transcript decides what each outbox event means for the message (its delivery
  // state, whether Retry is offered); the page only routes it to the open session's view.
  onOutbox(event) {
    const id = event.clientMsgId;
    const entry = this.delivery.get(id) || {
      sessionId: event.sessionId,
      text: event.text,
      history: [],
    };
    entry.last = event;
    this.delivery.set(id, entry);
    const view = this.view;
    if (view && view.sessionId === event.sessionId) {
      this.applyToView(view, { kind: "outbox", event });
    } else {
      this.render();
    }
  }

  retrySend(clientMsgId) {
    try {
      if (this.outbox.failed.has(clientMsgId)) {
        this.outbox.retry(clientMsgId);
      } else {
        // Lost by a server that rewound: the outbox had it delivered, so send it again.
        const entry = this.delivery.get(clientMsgId);
        if (entry) this.outbox.enqueue(entry.sessionId, entry.text, clientMsgId);
      }
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

  // One redraw per burst: at once after a quiet spell, else at most every RENDER_INTERVAL_MS,
  // so a replay of thousands of events costs a few dozen redraws, not one per event.
  render() {
    if (this.renderQueued) return;
    this.renderQueued = true;
    const draw = () => {
      this.renderQueued = false;
      this.lastRender = performance.now();
      drawPage(this);
    };
    const wait = (this.lastRender ?? -Infinity) + RENDER_INTERVAL_MS - performance.now();
    if (wait <= 0) queueMicrotask(draw);
    else setTimeout(draw, wait);
  }

  /** A snapshot of the client's state, for tests and the console. */
  debug() {
    return debugSnapshot(this);
  }
}
