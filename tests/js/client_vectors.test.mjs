// Every conformance vector of jupyter_chatbridge/protocol/client_vectors.json, run against
// the page's ES modules with the rules of client_rules.json: one subtest per vector, named
// after it. The Python core runs the same file (tests/test_client_vectors.py), and
// tests/test_client_vectors_js.py runs this file, so a vector the JavaScript fails turns
// the suite red. Run alone: node --test tests/js/
//
// The drivers mirror jupyter_chatbridge/testing/vectors.py, one per rule: a fresh state
// from the vector's config, every step's input in order, the output compared as JSON.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import {
  NotRetryable,
  OutboxFull,
  OutboxMachine,
  eventForm,
} from "../../jupyter_chatbridge/ui/static/outbox.js";
import {
  ReconnectBudget,
  afterExpiry,
  backoffMs,
  classify,
  serverUnavailable,
} from "../../jupyter_chatbridge/ui/static/policy.js";
import { Transcript } from "../../jupyter_chatbridge/ui/static/transcript.js";

const PROTOCOL = new URL("../../jupyter_chatbridge/protocol/", import.meta.url);
const readJson = (name) => JSON.parse(readFileSync(new URL(name, PROTOCOL), "utf-8"));
const RULES = readJson("client_rules.json");
const { vectors: VECTORS } = readJson("client_vectors.json");

const DRIVERS = {
  classify: () => (input) => classify(RULES, input.code ?? null),

  unavailable: () => (input) => serverUnavailable(RULES, input.status ?? null, input.body ?? null),

  expiry: () => (input) => afterExpiry(input.drove, input.driver ?? null, input.clientId),

  backoff: (config) => (input) =>
    backoffMs(RULES, input.attempt, input.random, { baseMs: config.baseMs, capMs: config.capMs }),

  budget: (config) => {
    const budget = new ReconnectBudget(RULES, config);
    return (input) => {
      let decision = { decision: null, delayMs: null };
      if (input.op === "opened") budget.opened(input.t);
      else if (input.op === "live") budget.liveEvent();
      else if (input.op === "reset") budget.reset();
      else if (input.op === "closed") {
        const result = budget.closed(input.t, input.code ?? null, input.random);
        decision = { decision: result.decision, delayMs: result.delayMs };
      } else throw new Error(`unknown budget op ${input.op}`);
      return { attempts: budget.attempts, ...decision };
    };
  },

  outbox: (config) => {
    const machine = new OutboxMachine(RULES, {
      maxQueued: config.maxQueued,
      maxRetries: config.maxRetries,
      retryDelayMs: config.retryDelayMs,
      maxFailed: config.maxRememberedFailures,
    });
    return (input) => {
      let events = [];
      let waitMs = null;
      let refused = null;
      try {
        if (input.op === "enqueue") {
          events = machine.enqueue(input.sessionId, input.clientMsgId, input.text);
        } else if (input.op === "retry") {
          events = machine.retry(input.clientMsgId);
        } else if (input.op === "outcome") {
          ({ events, waitMs } = machine.outcome(input.status ?? null, {
            seq: input.seq ?? null,
            duplicate: input.duplicate ?? null,
            retryAfterMs: input.retryAfterMs ?? null,
          }));
        } else if (input.op === "timer") {
          machine.timer();
        } else throw new Error(`unknown outbox op ${input.op}`);
      } catch (error) {
        if (error instanceof OutboxFull) refused = "full";
        else if (error instanceof NotRetryable) refused = "unknown";
        else throw error;
      }
      const post = machine.takePost();
      return {
        events: events.map(eventForm),
        refused,
        waitMs,
        post: post === null ? null : { clientMsgId: post.clientMsgId, attempt: post.posts },
        pending: machine.pending,
        failed: machine.failedIds,
      };
    };
  },

  transcript: (config) => {
    const transcript = new Transcript(RULES, config.sessionId ?? null);
    return (input) => {
      transcript.apply(input);
      return transcript.snapshot();
    };
  },
};

test("the vectors cover every rule and name the required cases", () => {
  assert.deepEqual(new Set(VECTORS.map((v) => v.rule)), new Set(Object.keys(DRIVERS)));
  assert.ok(VECTORS.length >= 40, `${VECTORS.length} vectors`);
  assert.equal(new Set(VECTORS.map((v) => v.name)).size, VECTORS.length, "names are test ids");
});

for (const vector of VECTORS) {
  test(vector.name, () => {
    const step = DRIVERS[vector.rule](vector.config ?? {});
    let checked = 0;
    vector.steps.forEach((item, index) => {
      const actual = step(item.input);
      if (!("expect" in item)) return;
      // Compared as JSON values, as the Python side does.
      const got = JSON.parse(JSON.stringify(actual));
      assert.deepStrictEqual(got, item.expect, `step ${index}: ${JSON.stringify(item.input)}`);
      checked += 1;
    });
    assert.ok(checked > 0, "a vector must check at least one step");
  });
}
