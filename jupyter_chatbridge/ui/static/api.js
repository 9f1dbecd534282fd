// The REST half of the contract under Jupyter's cookie login: the XSRF header on every
// call, the connection id once the stream has one, a time-out, and the answer as
// {status, body, text, retryAfter}: body is the JSON answer (null if it is not JSON), text
// the answer as it came (an export). A network error or the time-out throws.

import { retryAfterMs } from "./policy.js";

// How long a REST call may take before the page counts it as "no answer" (transient).
// The page's own choice, not a contract rule.
export const REQUEST_TIMEOUT_MS = 15000;

/** One REST call under cookie login: the XSRF header on every call, a time-out. */
export async function apiRequest({ url, xsrf, connectionId }, method, path, body) {
  const headers = { "X-XSRFToken": xsrf };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (connectionId) headers["X-Connection-ID"] = connectionId;
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), REQUEST_TIMEOUT_MS);
  try {
    const response = await fetch(url + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
      cache: "no-store",
      signal: controller.signal,
    });
    const text = await response.text();
    let json = null;
    try {
      json = text ? JSON.parse(text) : null;
    } catch {
      json = null;
    }
    return {
      status: response.status,
      body: json,
      text,
      retryAfter: retryAfterMs(response.headers.get("Retry-After")),
    };
  } finally {
    clearTimeout(timer);
  }
}
