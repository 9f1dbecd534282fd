// The browser client of jupyter_chatbridge (docs/protocol.md, version 1): plain ES modules,
// no build step. Served by the extension at {base_url}static/jupyter_chatbridge/ and loaded
// by the page at {base_url}chatbridge/, which passes base_url and the XSRF token in data
// attributes of <body> and maps every module to its versioned URL in an import map: every
// URL the client uses is computed from that base_url.
//
// The client rules (numbers and tables) are not in this code: page.py embeds
// jupyter_chatbridge/protocol/client_rules.json in the page as
// <script type="application/json" id="chatbridge-rules">, and every module that applies a
// rule takes that object as a parameter (tests/js runs them on the shared vectors).
//
// This entry module starts the page and re-exports the DOM-free pieces (for the console
// and for tests):
// - policy.js        classify, backoff with jitter, the reconnect budget, Retry-After
// - ids.js           the tab's cid (sessionStorage, memory fallback), clientMsgIds
// - outbox.js        the outbox state machine and its driver: ordered, idempotent sends
// - transcript.js    the transcript reducer: session and outbox events -> the messages shown
// - messages.js      the transcript's items and their display order
// - event-stream.js  the SSE stream: resume with Last-Event-ID, reconnect with backoff
// - live-socket.js   the session WebSocket: 4404 means the session is gone
// - api.js           REST under cookie login (XSRF, time-out)
// - page.js          ChatPage, the glue; render.js draws its state into the DOM
// - markdown.js      answers as sanitized Markdown (vendor/: marked, DOMPurify), Copy buttons
// - actions.js       Stop the streaming answer, Download the conversation as Markdown

import { ChatPage } from "./page.js";

export * from "./policy.js";
export { CidGuard, newClientMsgId, newUuid, tabCid } from "./ids.js";
export { NotRetryable, Outbox, OutboxFull, OutboxMachine } from "./outbox.js";
export { Transcript } from "./transcript.js";
export { EventStream } from "./event-stream.js";
export { LiveSocket } from "./live-socket.js";
export { ChatPage };

if (typeof document !== "undefined" && document.body && document.body.dataset.baseUrl) {
  const rules = JSON.parse(document.getElementById("chatbridge-rules").textContent);
  const page = new ChatPage(document.body, rules);
  window.chatbridge = page;
  page.start();
}
