// The page's DOM: draws the ChatPage's state into the elements page.py serves (and reads
// it out for chatbridge.debug()). Nothing here decides anything; it shows what the page,
// its transcript and its outbox say. Answers are Markdown (markdown.js); user messages are
// plain text.

import { drawActions } from "./actions.js";
import { MarkdownBody, renderStats } from "./markdown.js";

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

const DELIVERY_LABELS = {
  sending: "sending…",
  retrying: "delivery delayed, retrying…",
  delivered: "delivered",
  failed: "not delivered",
};

export function drawPage(page) {
  const view = page.view;
  const labels = {
    connecting: "connecting…",
    connected: "connected",
    offline: "offline",
    "signed-out": "signed out: log in again",
  };
  const conn = page.$("conn-status");
  conn.dataset.state = page.status;
  const { attempts, maxAttempts } = page.stream.budget;
  conn.textContent =
    page.status === "reconnecting"
      ? `reconnecting, attempt ${attempts} of ${maxAttempts}…`
      : labels[page.status] || page.status;
  if (page.status === "offline" || page.status === "signed-out") {
    const again = element("button", "inline", page.status === "offline" ? "Reconnect" : "Log in");
    again.type = "button";
    again.addEventListener("click", () => {
      if (page.status === "offline") page.stream.reconnect();
      else {
        const next = encodeURIComponent(window.location.pathname);
        window.location.assign(`${page.baseUrl}login?next=${next}`);
      }
    });
    conn.append(" ", again);
  }

  drawPicker(page);
  drawUnavailable(page);

  const gone = page.$("session-gone");
  gone.hidden = !(view && page.gone);
  if (view && page.gone) {
    const g = page.gone;
    const why = g.reason || "session unknown";
    page.$("gone-detail").textContent = g.code
      ? `The live view closed with ${g.code} (${why}) after ${Math.round(g.afterMs)} ms.`
      : g.source === "session_ended"
        ? "It was ended."
        : "The server does not know it.";
  }

  const live = page.$("live-status");
  const ls = page.liveState;
  live.dataset.state = ls ? ls.state : "";
  let liveText = "";
  if (view && !page.gone && ls) {
    if (ls.state === "reconnecting") {
      const of = page.rules.reconnect.maxAttempts;
      liveText = `live view lost (${ls.code}); reconnecting, attempt ${ls.attempt} of ${of}…`;
    } else if (ls.state === "lost") {
      liveText = `live view lost (${ls.code}) after ${ls.attempts} reconnect attempts`;
    } else if (ls.state === "refused") {
      liveText = `live view refused (${ls.code} ${ls.reason || ""})`;
    }
  }
  const errors = [...page.errors.values()].join(" · ");
  if (errors) liveText = liveText ? `${liveText} · ${errors}` : errors;
  live.hidden = !liveText;
  live.textContent = liveText;
  if (ls && ls.state === "lost" && !page.gone) {
    const again = element("button", "inline", "Reconnect");
    again.type = "button";
    again.addEventListener("click", () => page.selectSession(view.sessionId, { force: true }));
    live.append(" ", again);
  }

  drawTranscript(page);
  drawActions(page);

  // The transcript's rule: a send of ours pending, a message unanswered, an answer streaming.
  page.$("thinking").hidden = !(view && !page.gone && view.thinking);
  const usable = Boolean(view) && !page.gone;
  page.$("message").disabled = !usable;
  page.$("send").disabled = !usable;
}

// The server cannot serve chat at all (its store is held by another server): its own
// message, above everything it makes fail.
function drawUnavailable(page) {
  let banner = page.$("server-unavailable");
  if (!banner) {
    banner = element("section", "gone");
    banner.id = "server-unavailable";
    banner.setAttribute("role", "alert");
    banner.append(element("strong", "", "The server cannot serve chat."), " ");
    banner.append(element("span", "detail"));
    page.$("session-gone").before(banner);
  }
  banner.hidden = page.unavailable === null;
  banner.querySelector(".detail").textContent = page.unavailable || "";
}

function drawPicker(page) {
  const select = page.$("session-select");
  const current = page.view ? page.view.sessionId : "";
  const ids = [...page.sessions];
  if (current && !ids.includes(current)) ids.push(current);
  // Rebuild only on change, so an open dropdown is not reset by every streamed event.
  const key = JSON.stringify([ids, page.sessions, current]);
  if (key === page.pickerKey) return;
  page.pickerKey = key;
  const prompt = ids.length ? "— pick a session —" : "— no sessions yet —";
  const options = [element("option", "", prompt)];
  options[0].value = "";
  for (const id of ids) {
    const option = element("option", "", page.sessions.includes(id) ? id : `${id} (gone)`);
    option.value = id;
    options.push(option);
  }
  select.replaceChildren(...options);
  select.value = current;
}

function drawTranscript(page) {
  const transcript = page.$("transcript");
  const view = page.view;
  const nearBottom =
    transcript.scrollHeight - transcript.scrollTop - transcript.clientHeight < 40;
  const nodes = [];
  if (!view) {
    nodes.push(element("p", "hint", "Pick a session or create one to start chatting."));
  } else {
    // The transcript's order: the session's seq order, this page's unnumbered sends last.
    // A message's node is rebuilt only when what it shows changed: a long conversation
    // (megabytes of text) is not redrawn whole for every streamed word.
    const cache = rowCache(page, view);
    const seen = new Set();
    for (const message of view.ordered()) {
      seen.add(message.key);
      const looks = looksOf(page, message);
      const cached = cache.rows.get(message.key);
      if (cached && sameLooks(cached.looks, looks)) {
        nodes.push(cached.node);
        continue;
      }
      // An answer keeps its node (and its rendered Markdown) while it changes.
      const row = cached && cached.answer ? cached : messageRow(page, message);
      if (row.answer) row.answer.update(message, page.actions.stopNote(message));
      row.looks = looks;
      cache.rows.set(message.key, row);
      nodes.push(row.node);
    }
    for (const key of cache.rows.keys()) if (!seen.has(key)) cache.rows.delete(key);
    if (view.ended === "session_ended") nodes.push(element("div", "msg system", "session ended"));
    if (nodes.length === 0) nodes.push(element("p", "hint", "No messages yet."));
  }
  placeChildren(transcript, nodes);
  if (nearBottom) transcript.scrollTop = transcript.scrollHeight;
}

function rowCache(page, view) {
  if (!page.rowCache || page.rowCache.view !== view) page.rowCache = { view, rows: new Map() };
  return page.rowCache;
}

// Everything a message's node shows (strings compare by value, so a long text is cheap).
function looksOf(page, message) {
  const entry = message.delivery !== null ? page.delivery.get(message.clientMsgId) : undefined;
  return [
    message.role,
    message.text,
    message.error,
    message.done,
    message.ended,
    page.actions.stopNote(message),
    message.messageId,
    message.seq,
    message.delivery,
    message.attempt,
    message.status,
    message.retryOffered,
    message.clientMsgId,
    entry ? entry.history.join(" ") : null,
  ];
}

function sameLooks(a, b) {
  return a.length === b.length && a.every((value, i) => value === b[i]);
}

function messageRow(page, message) {
  if (message.role === "user") return { node: userBubble(page, message) };
  if (message.role === "agent") {
    const answer = new AnswerBubble();
    return { node: answer.node, answer };
  }
  return { node: element("div", `msg ${message.error ? "error" : "system"}`, message.text) };
}

// How an answer ended, when that is not plain "complete" and no error says it already.
const ENDING_LABELS = { stopped: "stopped" };

/** An answer: its Markdown, its error, how it ended, and what its Stop came to. */
class AnswerBubble {
  constructor() {
    this.node = element("div", "msg assistant");
    this.body = new MarkdownBody();
    this.error = element("div", "agent-error");
    this.note = element("div", "answer-note");
    this.node.append(this.body.element, this.error, this.note);
  }

  update(message, stopNote) {
    const node = this.node;
    node.dataset.messageId = message.messageId;
    node.dataset.done = String(message.done);
    node.dataset.ended = message.ended || "";
    this.body.show(message.text, message.done);
    this.error.hidden = !message.error;
    this.error.textContent = message.error || "";
    // A Stop that failed is said here, by the answer it concerns; "stopping" is the button's.
    const failed = stopNote && stopNote !== "stopping" ? stopNote : null;
    const label = failed || ENDING_LABELS[message.ended] || "";
    this.note.hidden = !label;
    this.note.textContent = label;
    this.note.dataset.kind = failed ? "stop-failed" : message.ended || "";
  }
}

// Touch the DOM only where the list changed: unchanged nodes stay where they are.
function placeChildren(parent, nodes) {
  const current = parent.children;
  let same = 0;
  while (same < nodes.length && same < current.length && current[same] === nodes[same]) same += 1;
  if (same === nodes.length && same === current.length) return;
  while (parent.children.length > same) parent.lastElementChild.remove();
  parent.append(...nodes.slice(same));
}

// The transcript's delivery states by the names the page shows them under.
const STATE_NAMES = {
  pending: "sending",
  retrying: "retrying",
  failed: "failed",
  delivered: "delivered",
};

/** Why a delivery is delayed or failed, from the transcript's fields of the message. */
function deliveryNote(message) {
  if (message.delivery === "retrying") {
    const why = message.status ? `HTTP ${message.status}` : message.error;
    return `attempt ${message.attempt} failed (${why}); retrying`;
  }
  if (message.delivery === "failed") {
    const why = message.error || `HTTP ${message.status}`;
    return message.attempt > 1 ? `${message.attempt} attempts; last: ${why}` : why;
  }
  return "";
}

function userBubble(page, message) {
  // delivery null: not sent from this page, so the session's user_message is all there is.
  const state = STATE_NAMES[message.delivery ?? "delivered"];
  const entry = message.delivery !== null ? page.delivery.get(message.clientMsgId) : undefined;
  const bubble = element("div", "msg user");
  bubble.dataset.clientMsgId = message.clientMsgId || "";
  if (message.seq !== null) bubble.dataset.seq = String(message.seq);
  bubble.dataset.state = state;
  bubble.dataset.history = entry ? entry.history.map((s) => STATE_NAMES[s]).join(" ") : "delivered";
  bubble.append(element("div", "text", message.text));
  const status = element("div", "delivery", DELIVERY_LABELS[state] || state);
  const note = deliveryNote(message);
  if (note) status.title = note;
  if (state === "failed" && note) status.append(element("span", "why", ` (${note})`));
  // Offered exactly when the transcript says the failure may be retried.
  if (state === "failed" && message.retryOffered) {
    const retry = element("button", "inline", "Retry");
    retry.type = "button";
    retry.addEventListener("click", () => page.retrySend(message.clientMsgId));
    status.append(" ", retry);
  }
  bubble.append(status);
  return bubble;
}

/** A snapshot of the page's state, for tests and the console (`chatbridge.debug()`). */
export function debugSnapshot(page) {
  const view = page.view;
  return {
    cid: page.cid,
    cidRenewals: page.cidRenewals,
    connectionId: page.connectionId,
    epoch: page.epoch,
    status: page.status,
    welcomes: page.welcomes.slice(),
    sessionId: view ? view.sessionId : null,
    lastSeq: view ? (view.lastSeq ?? 0) : 0,
    applied: view ? view.appliedSeqs.slice() : [],
    duplicatesDropped: view ? view.duplicates : 0,
    transcript: view ? view.snapshot() : null,
    stream: {
      attempts: page.stream.budget.attempts,
      reconnectPending: page.stream.timer !== null,
      retryInMs: page.stream.retryInMs,
      pings: page.stream.pings,
      idleDrops: page.stream.idleDrops,
    },
    gone: page.gone,
    unavailable: page.unavailable,
    live: page.live
      ? {
          opened: page.live.opened,
          attempts: page.live.budget.attempts,
          reconnectPending: page.live.reconnectPending,
          state: page.liveState && page.liveState.state,
        }
      : null,
    outbox: { queued: page.outbox.queue.length, failed: [...page.outbox.failed.keys()] },
    markdownRenders: renderStats.renders,
    stops: Object.fromEntries(page.actions.stops),
    delivery: Object.fromEntries(
      [...page.delivery].map(([id, e]) => [
        id,
        { state: e.history.at(-1), history: e.history.slice() },
      ]),
    ),
  };
}
