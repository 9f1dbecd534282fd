// The contract's client policy, free of DOM and I/O. Every number and table comes from
// `rules`, the object read from jupyter_chatbridge/protocol/client_rules.json (page.py
// embeds it in the page; the Node tests read the file): which failures are worth retrying
// (classify), how long to wait before a reconnect (backoffMs), and the ReconnectBudget,
// which only evidence of a healthy connection refills. The Python client's
// protocol/rules.py applies the same file; tests/js runs both against the same vectors.

/**
 * "permanent" or "transient" for a WebSocket close code or an HTTP status; null (or
 * undefined) stands for no code at all: a network error or a time-out.
 */
export function classify(rules, code) {
  const table = rules.classify;
  if (code === null || code === undefined) return "transient";
  if (table.permanentCloseCodes.includes(code)) return "permanent";
  const inRange = code >= table.permanentHttpMin && code <= table.permanentHttpMax;
  if (inRange && !table.transientHttp.includes(code)) return "permanent";
  return table.otherwise;
}

/**
 * The server's message when an answer to a call that commits nothing (a GET; the event
 * stream, whose status EventSource hides) says the server cannot serve chat at all (its
 * store is held by another server); null otherwise.
 */
export function serverUnavailable(rules, status, body) {
  const rule = rules.unavailable;
  if (status !== rule.status || !body || body.code !== rule.code) return null;
  return String(body.error || `HTTP ${status}`);
}

/**
 * What a client does once the server no longer holds its connection (resumed: false):
 * it drove the session and no one else took over (`driver`, the session's clientId, is
 * null or its own `clientId`): "attach" again; another client drives it: "taken_over"
 * (show it, with Take over); it did not drive: "none".
 */
export function afterExpiry(drove, driver, clientId) {
  if (!drove) return "none";
  return driver === null || driver === undefined || driver === clientId ? "attach" : "taken_over";
}

// Past this exponent the nominal delay is the cap for any sane base.
const MAX_EXPONENT = 64;

/** The un-jittered delay before reconnect attempt `attempt` (1-based). */
export function nominalDelayMs(rules, attempt, { baseMs, capMs } = {}) {
  if (!Number.isInteger(attempt) || attempt < 1) {
    throw new RangeError(`attempt is 1-based, got ${attempt}`);
  }
  const base = baseMs ?? rules.reconnect.baseMs;
  const cap = capMs ?? rules.reconnect.capMs;
  return Math.min(cap, base * 2 ** Math.min(attempt - 1, MAX_EXPONENT));
}

/**
 * Equal jitter: the nominal delay scaled by `random` (clamped to [0, 1]) into
 * [jitterMin, 1] of itself, so clients that dropped together spread out.
 */
export function backoffMs(rules, attempt, random, limits = {}) {
  const fraction = Math.min(1, Math.max(0, random));
  const jitterMin = rules.reconnect.jitterMin;
  return nominalDelayMs(rules, attempt, limits) * (jitterMin + (1 - jitterMin) * fraction);
}

/**
 * How many reconnect attempts are left, refilled only by evidence of a healthy
 * connection: one that stayed open `stableMs`, or one that delivered a live event. A
 * server that accepts and drops at once therefore uses the budget up, and the page goes
 * offline instead of retrying forever. Up to 1 + maxAttempts connections in a row:
 * the first, then at most maxAttempts reconnects.
 *
 * `closed` and `nextAttempt` answer {decision: "retry"|"offline"|"failed", attempt,
 * delayMs}: the reconnect about to be made (retry) or the attempts used.
 */
export class ReconnectBudget {
  constructor(rules, { maxAttempts, baseMs, capMs, stableMs } = {}) {
    this.rules = rules;
    this.maxAttempts = maxAttempts ?? rules.reconnect.maxAttempts;
    this.baseMs = baseMs ?? rules.reconnect.baseMs;
    this.capMs = capMs ?? rules.reconnect.capMs;
    this.stableMs = stableMs ?? rules.reconnect.stableMs;
    if (this.maxAttempts < 0) throw new RangeError(`maxAttempts must be >= 0`);
    if (this.baseMs <= 0 || this.capMs <= 0) throw new RangeError("base and cap must be > 0");
    this.attempts = 0;
    this.openedAt = null;
  }

  /** True once every attempt is used. */
  get exhausted() {
    return this.attempts >= this.maxAttempts;
  }

  /** The connection is up (a WebSocket open, an SSE welcome): not yet proof of health. */
  opened(nowMs) {
    this.openedAt = nowMs;
  }

  /** The open connection delivered a live session event: it works. */
  liveEvent() {
    if (this.openedAt !== null) this.attempts = 0;
  }

  /** The user asked to reconnect (or the network came back): a fresh budget. */
  reset() {
    this.attempts = 0;
  }

  /** The connection ended or failed to open, with a close code / HTTP status or null. */
  closed(nowMs, code, random) {
    const openedAt = this.openedAt;
    this.openedAt = null;
    if (openedAt !== null && nowMs - openedAt >= this.stableMs) this.attempts = 0;
    if (classify(this.rules, code) === "permanent") {
      return { decision: "failed", attempt: this.attempts, delayMs: null };
    }
    return this.nextAttempt(random);
  }

  /** Spend one attempt: its delay, or "offline" when none is left. */
  nextAttempt(random) {
    if (this.exhausted) return { decision: "offline", attempt: this.attempts, delayMs: null };
    this.attempts += 1;
    const limits = { baseMs: this.baseMs, capMs: this.capMs };
    const delayMs = backoffMs(this.rules, this.attempts, random, limits);
    return { decision: "retry", attempt: this.attempts, delayMs };
  }
}

/** A Retry-After header (delta seconds or an HTTP date) in milliseconds, or null. */
export function retryAfterMs(value, now = Date.now()) {
  if (!value) return null;
  if (/^\s*\d+\s*$/.test(value)) return Number(value) * 1000;
  const date = Date.parse(value);
  return Number.isNaN(date) ? null : Math.max(0, date - now);
}
