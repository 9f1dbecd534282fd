// The page's Stop rules (ui/static/actions.js) without a browser: which answer Stop names,
// and what each server answer leaves shown. The network is the seam: `request` answers as
// the server's POST sessions/{id}/stop does (tests/browser drives the real thing).

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { SessionActions, streamingAnswer } from "../../jupyter_chatbridge/ui/static/actions.js";
import { Transcript } from "../../jupyter_chatbridge/ui/static/transcript.js";

const RULES = JSON.parse(
  readFileSync(new URL("../../jupyter_chatbridge/protocol/client_rules.json", import.meta.url)),
);

function session(...events) {
  const view = new Transcript(RULES, "s1");
  events.forEach((event, i) => view.apply({ kind: "event", event: { sessionId: "s1", seq: i + 1, ...event } }));
  return view;
}

const ASKED = [
  { type: "user_message", clientMsgId: "c1", text: "one", connectionId: null },
  { type: "user_message", clientMsgId: "c2", text: "two", connectionId: null },
  { type: "message_start", messageId: "m1", replyTo: 1 },
  { type: "block_delta", messageId: "m1", text: "Echo: " },
];

function fakePage(view, answers) {
  const calls = [];
  return {
    calls,
    view,
    live: null, // no socket: Stop goes over REST
    render() {},
    async request(method, path, body) {
      calls.push([method, path, body]);
      return answers.shift();
    },
  };
}

test("Stop names the answer that streams, and none once it ended", () => {
  const view = session(...ASKED);
  assert.equal(streamingAnswer(view).messageId, "m1");
  view.apply({ kind: "event", event: { type: "message_end", sessionId: "s1", seq: 5, messageId: "m1", reason: "stopped" } });
  assert.equal(streamingAnswer(view), null);
  view.apply({ kind: "event", event: { type: "message_start", sessionId: "s1", seq: 6, messageId: "m2", replyTo: 2 } });
  assert.equal(streamingAnswer(view).messageId, "m2");
  assert.equal(streamingAnswer(null), null);
});

test("a stopped answer shows 'stopping' until its end, a repeat says it already ended", async () => {
  const view = session(...ASKED);
  const page = fakePage(view, [
    { status: 200, body: { sessionId: "s1", stopped: "m1", reason: "stopped", messageId: "m1" } },
    { status: 200, body: { sessionId: "s1", stopped: null, reason: "already_ended", messageId: "m1" } },
  ]);
  const actions = new SessionActions(page);
  const answer = streamingAnswer(view);
  const first = actions.stop("m1");
  assert.equal(actions.stopNote(answer), "stopping");
  await actions.stop("m1"); // a second click while the first is on its way: not sent
  await first;
  assert.deepEqual(page.calls, [["POST", "sessions/s1/stop", { messageId: "m1" }]]);
  assert.equal(actions.stopNote(answer), "stopping");
  await actions.stop("m1");
  assert.equal(page.calls.length, 2);
  assert.equal(actions.stopNote(answer), null);
  assert.equal(actions.stops.size, 0);
});

test("a failed Stop is said by its answer, and a later one clears it", async () => {
  const view = session(...ASKED);
  const page = fakePage(view, [
    { status: 503, body: { error: "the session store cannot commit", code: "busy" } },
    { status: 200, body: { sessionId: "s1", stopped: "m1", reason: "stopped", messageId: "m1" } },
  ]);
  const actions = new SessionActions(page);
  const answer = streamingAnswer(view);
  await actions.stop("m1");
  assert.equal(actions.stopNote(answer), "could not stop: the session store cannot commit");
  await actions.stop("m1");
  assert.equal(actions.stopNote(answer), "stopping");
  view.apply({ kind: "event", event: { type: "message_end", sessionId: "s1", seq: 5, messageId: "m1", reason: "stopped" } });
  assert.equal(actions.stopNote(answer), null); // it ended: nothing more to say about Stop
});

test("an unreachable server is said as such", async () => {
  const view = session(...ASKED);
  const page = fakePage(view, []);
  page.request = async () => {
    throw new TypeError("Failed to fetch");
  };
  const actions = new SessionActions(page);
  await actions.stop("m1");
  assert.equal(actions.stopNote(streamingAnswer(view)), "could not stop: the server is unreachable");
});
