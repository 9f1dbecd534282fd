// The contract's client policy, free of DOM and I/O: which failures are worth retrying
// (classify), how long to wait before a reconnect (backoffDelay) and what a Retry-After
// header asks for (retryAfterMs). The Python client's ReconnectPolicy follows the same rules.

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
