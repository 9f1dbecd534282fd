// The page's DOM: draws the ChatPage's state into the elements page.py serves. Nothing here
// decides anything; it shows what the page, its transcript and its outbox say.

import { MAX_RECONNECT_ATTEMPTS } from "./policy.js";

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
    reconnecting: "reconnecting…",
    offline: "offline",
    "signed-out": "signed out: log in again",
  };
  const conn = page.$("conn-status");
  conn.dataset.state = page.status;
  conn.textContent = labels[page.status] || page.status;
  if (page.status === "offline" || page.status === "signed-out") {
    const again = element("button", "inline", page.status === "offline" ? "Reconnect" : "Log in");
    again.type = "button";
    again.addEventListener("click", () => {
      if (page.status === "offline") page.stream.reconnect();
      else window.location.assign(`${page.baseUrl}login?next=${encodeURIComponent(window.location.pathname)}`);
    });
    conn.append(" ", again);
  }

  drawPicker(page);

  const gone = page.$("session-gone");
  gone.hidden = !(view && page.gone);
  if (view && page.gone) {
    const g = page.gone;
    page.$("gone-detail").textContent = g.code
      ? `The live view closed with ${g.code} (${g.reason || "session unknown"}) after ${Math.round(g.afterMs)} ms.`
      : g.source === "session_ended"
        ? "It was ended."
        : "The server does not know it.";
  }

  const live = page.$("live-status");
  const ls = page.liveState;
  let liveText = "";
  if (view && !page.gone && ls) {
    if (ls.state === "reconnecting") {
      liveText = `live view lost (${ls.code}); reconnecting, attempt ${ls.attempt} of ${MAX_RECONNECT_ATTEMPTS}…`;
    } else if (ls.state === "lost") {
      liveText = `live view lost (${ls.code}) after ${MAX_RECONNECT_ATTEMPTS} attempts`;
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

  const pending = view ? page.outbox.pendingFor(view.sessionId) : 0;
  page.$("thinking").hidden = !(view && !page.gone && (pending > 0 || view.busy));
  const usable = Boolean(view) && !page.gone;
  page.$("message").disabled = !usable;
  page.$("send").disabled = !usable;
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
  const options = [element("option", "", ids.length ? "— pick a session —" : "— no sessions yet —")];
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
    const seen = new Set();
    for (const item of view.items) {
      if (item.kind === "user") {
        seen.add(item.clientMsgId);
        nodes.push(userBubble(page, item.clientMsgId, item.text, item.seq, "delivered"));
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
    for (const [id, entry] of page.delivery) {
      if (entry.sessionId === view.sessionId && !seen.has(id)) {
        nodes.push(userBubble(page, id, entry.text, null, entry.state));
      }
    }
    if (nodes.length === 0) nodes.push(element("p", "hint", "No messages yet."));
  }
  transcript.replaceChildren(...nodes);
  if (nearBottom) transcript.scrollTop = transcript.scrollHeight;
}

function userBubble(page, clientMsgId, text, seq, fallbackState) {
  const entry = clientMsgId ? page.delivery.get(clientMsgId) : undefined;
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
    retry.addEventListener("click", () => page.retrySend(clientMsgId));
    status.append(" ", retry);
  }
  bubble.append(status);
  return bubble;
}

