// The contract's send outbox, free of DOM: messages go out in the order they were queued,
// one request at a time, each keeping its clientMsgId across retries (the server
// deduplicates, so a retry after a lost answer is harmless). A message waiting for its
// retry holds back the ones behind it: ordering beats latency.
//
// OutboxMachine is the pure state machine of protocol/outbox_machine.py: outcomes in,
// send_* events out, every limit and the outcome -> event table from `rules`
// (client_rules.json). Outbox drives it with real requests and timers for the page.

import { newClientMsgId } from "./ids.js";
import { classify } from "./policy.js";

export class OutboxFull extends Error {}

/** A Retry of a message that is not a remembered retryable failure. */
export class NotRetryable extends Error {}

/**
 * Which kind of outcome an answer is: 2xx accepted; refused (the rules' refusedHttp: the
 * message itself is refused, so sending it again cannot help); else as `classify` says.
 */
export function outcomeOf(rules, status) {
  if (status !== null && status !== undefined && status >= 200 && status <= 299) {
    return "accepted";
  }
  if (rules.outbox.refusedHttp.includes(status)) return "refused";
  return classify(rules, status);
}

/** The rules' transition row for an outcome. */
export function transition(rules, outcome, retriesLeft) {
  for (const row of rules.outbox.transitions) {
    if (row.outcome === outcome && (row.retriesLeft === null || row.retriesLeft === retriesLeft)) {
      return row;
    }
  }
  throw new Error(`no outbox transition for ${outcome} (retries left: ${retriesLeft})`);
}

/**
 * An outbox event in the form the conformance vectors compare (Python's
 * MachineEvent.to_dict): only the fields its type has.
 */
export function eventForm(event) {
  const out = { type: event.type, clientMsgId: event.clientMsgId };
  if (event.type === "send_accepted") {
    Object.assign(out, {
      attempt: event.attempt,
      status: event.status,
      seq: event.seq,
      duplicate: event.duplicate,
    });
  } else if (event.type === "send_failed") {
    Object.assign(out, {
      attempt: event.attempt,
      status: event.status,
      willRetry: event.willRetry,
      retryable: event.retryable,
      retryInMs: event.retryInMs,
    });
  }
  return out;
}

function makeEvent(type, message, fields = {}) {
  return {
    type,
    clientMsgId: message.clientMsgId,
    sessionId: message.sessionId,
    text: message.text,
    attempt: null,
    status: null,
    willRetry: null,
    retryable: null,
    retryInMs: null,
    seq: null,
    duplicate: null,
    ...fields,
    message,
  };
}

/**
 * The outbox's state: a queue whose head is "idle", "in_flight" or "waiting" for its
 * retry. After every input the driver asks `takePost()` whether to start a request, and
 * calls `timer()` when a `waitMs` it was given is over.
 */
export class OutboxMachine {
  constructor(rules, { maxQueued, maxRetries, retryDelayMs, maxFailed } = {}) {
    this.rules = rules;
    this.maxQueued = maxQueued ?? rules.send.maxQueued;
    this.maxRetries = maxRetries ?? rules.send.maxRetries;
    this.retryDelayMs = retryDelayMs ?? rules.send.retryDelayMs;
    this.maxFailed = maxFailed ?? rules.send.maxRememberedFailures;
    if (this.maxQueued < 1 || this.maxRetries < 0 || this.retryDelayMs < 0 || this.maxFailed < 0) {
      throw new RangeError("outbox limits must be non-negative (maxQueued at least 1)");
    }
    this.queue = [];
    this.failed = new Map(); // clientMsgId -> message, oldest first, for the Retry button
    this.head = "idle";
  }

  /** Admit a new message; throws OutboxFull. */
  enqueue(sessionId, clientMsgId, text) {
    return this.admit({ sessionId, clientMsgId, text, posts: 0, confirmed: false });
  }

  /** The user's Retry of a retryable final failure: same id, a fresh budget. */
  retry(clientMsgId) {
    const old = this.failed.get(clientMsgId);
    if (!old) throw new NotRetryable(`${clientMsgId} is not a failure that can be retried`);
    const events = this.admit({ ...old, posts: 0, confirmed: false });
    this.failed.delete(clientMsgId); // only once admitted: a full outbox keeps it retryable
    return events;
  }

  /** The message to post now, if a request should start; counts the attempt. */
  takePost() {
    if (this.head !== "idle" || this.queue.length === 0) return null;
    this.head = "in_flight";
    const message = this.queue[0];
    message.posts += 1;
    return message;
  }

  /**
   * The in-flight request's answer (status null: none). Returns {events, waitMs}.
   * A message confirmed meanwhile (its user_message arrived) counts as accepted.
   */
  outcome(status, { seq = null, duplicate = null, retryAfterMs = null, error = null } = {}) {
    if (this.head !== "in_flight") throw new Error("no request in flight");
    const message = this.queue[0];
    let kind = outcomeOf(this.rules, status);
    if (kind !== "accepted" && message.confirmed) kind = "accepted";
    const row = transition(this.rules, kind, message.posts <= this.maxRetries);
    const common = { attempt: message.posts, status };
    if (row.event === "send_accepted") {
      this.pop();
      const evidence = message.confirmed && outcomeOf(this.rules, status) !== "accepted";
      return {
        events: [makeEvent("send_accepted", message, { ...common, seq, duplicate, evidence })],
        waitMs: null,
      };
    }
    if (row.willRetry) {
      this.head = "waiting";
      const delay = retryAfterMs === null ? this.retryDelayMs : Math.max(0, retryAfterMs);
      const fields = { ...common, willRetry: true, retryInMs: delay, error };
      return { events: [makeEvent("send_failed", message, fields)], waitMs: delay };
    }
    this.pop();
    if (row.retryable) this.remember(message);
    const fields = { ...common, willRetry: false, retryable: Boolean(row.retryable), error };
    return { events: [makeEvent("send_failed", message, fields)], waitMs: null };
  }

  /** The retry wait is over: the head may be posted again. */
  timer() {
    if (this.head === "waiting") this.head = "idle";
  }

  /**
   * Evidence that the server has the message (its user_message event): a queued message
   * is accepted without another post (an in-flight one when its answer comes), a
   * remembered final failure is forgotten. Returns {known, events}.
   */
  evidence(clientMsgId) {
    if (this.failed.delete(clientMsgId)) return { known: true, events: [] };
    const index = this.queue.findIndex((m) => m.clientMsgId === clientMsgId);
    if (index < 0) return { known: false, events: [] };
    const message = this.queue[index];
    message.confirmed = true;
    if (index === 0 && this.head === "in_flight") return { known: true, events: [] };
    this.queue.splice(index, 1);
    if (index === 0) this.head = "idle";
    const fields = { attempt: message.posts, evidence: true };
    return { known: true, events: [makeEvent("send_accepted", message, fields)] };
  }

  /** Drop everything queued (the outbox was closed). */
  clear() {
    this.queue = [];
    this.head = "idle";
  }

  get pending() {
    return this.queue.map((m) => m.clientMsgId);
  }

  get failedIds() {
    return [...this.failed.keys()];
  }

  admit(message) {
    if (this.queue.length >= this.maxQueued) {
      throw new OutboxFull(
        `${this.maxQueued} messages are already waiting to be delivered; ` +
          "wait for them before sending more",
      );
    }
    this.queue.push(message);
    return [makeEvent("send_pending", message)];
  }

  pop() {
    this.queue.shift();
    this.head = "idle";
  }

  remember(message) {
    if (this.maxFailed === 0) return;
    this.failed.delete(message.clientMsgId);
    this.failed.set(message.clientMsgId, message);
    while (this.failed.size > this.maxFailed) this.failed.delete(this.failed.keys().next().value);
  }
}

/**
 * The page's outbox: an OutboxMachine driven with real requests and timers.
 *
 * `post(message)` performs one send and resolves to {status, body, retryAfter} or throws
 * on a network error or time-out. `listener(event)` gets every send_pending,
 * send_failed and send_accepted event (see makeEvent), with an `error` text on failures.
 */
export class Outbox {
  constructor({ rules, post, listener, retryDelayMs }) {
    this.machine = new OutboxMachine(rules, { retryDelayMs });
    this.post = post;
    this.listener = listener;
    this.running = false;
    this.waiting = null; // {wake, timer} while the head waits for its retry
  }

  get queue() {
    return this.machine.queue;
  }

  get failed() {
    return this.machine.failed;
  }

  /** Queue a message; throws OutboxFull when the outbox is full. */
  enqueue(sessionId, text, clientMsgId = newClientMsgId()) {
    this.emit(this.machine.enqueue(sessionId, clientMsgId, text));
    this.pump();
    return clientMsgId;
  }

  /** Send a retryable final failure again: same clientMsgId, a fresh retry budget. */
  retry(clientMsgId) {
    if (!this.failed.has(clientMsgId)) return;
    this.emit(this.machine.retry(clientMsgId));
    this.pump();
  }

  /** Evidence that the server has this message; true if the outbox knew it. */
  confirm(clientMsgId) {
    const wasWaitingHead = this.waiting !== null && this.queue[0]?.clientMsgId === clientMsgId;
    const { known, events } = this.machine.evidence(clientMsgId);
    this.emit(events);
    if (wasWaitingHead && events.length > 0) this.waiting.wake();
    return known;
  }

  emit(events) {
    for (const event of events) {
      // A broken UI callback must not stop delivery of the messages behind it.
      try {
        this.listener(event);
      } catch (error) {
        console.error("chatbridge: outbox listener failed", error);
      }
    }
  }

  // The only loop that posts: `running` makes a second call a no-op, so there is never
  // more than one request in flight and never two flushes racing each other.
  async pump() {
    if (this.running) return;
    this.running = true;
    try {
      for (;;) {
        const message = this.machine.takePost();
        if (message === null) break;
        const answer = await this.attempt(message);
        const { events, waitMs } = this.machine.outcome(answer.status, answer);
        this.emit(events);
        if (waitMs !== null) {
          await this.wait(waitMs);
          this.machine.timer();
        }
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
      // No status at all: a network error or our time-out.
      return { status: null, error: describeError(error) };
    }
    const { status, body } = response;
    if (status >= 200 && status <= 299) {
      return { status, seq: body?.seq ?? null, duplicate: Boolean(body && body.duplicate) };
    }
    const text = body && body.error ? `${body.error}${body.code ? ` (${body.code})` : ""}` : "";
    return { status, error: text || `HTTP ${status}`, retryAfterMs: response.retryAfter ?? null };
  }

  wait(delay) {
    return new Promise((resolve) => {
      const wake = () => {
        clearTimeout(this.waiting.timer);
        this.waiting = null;
        resolve();
      };
      this.waiting = { wake, timer: setTimeout(wake, delay) };
    });
  }
}

function describeError(error) {
  if (error && error.name === "AbortError") return "no answer in time";
  return (error && error.message) || "network error";
}
