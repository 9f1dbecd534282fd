// The contract's send outbox, free of DOM: ordered sends, one in flight, the same
// clientMsgId on every retry. The page gives it a `post` function that does the HTTP.

import { MAX_QUEUED_SENDS, MAX_SEND_RETRIES, RETRY_DELAY_MS, classify } from "./policy.js";
import { newClientMsgId } from "./ids.js";

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
  enqueue(sessionId, text, clientMsgId = newClientMsgId()) {
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

