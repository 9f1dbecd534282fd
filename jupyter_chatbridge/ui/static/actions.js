// What the page does to a session besides sending: Stop the answer that streams, and
// Download the conversation as Markdown. Each keeps the state of its requests (so render.js
// can show it next to what it concerns) and draws its own buttons.
//
// Stop (docs/protocol.md, Extensions 0.3) names the answer it stops, so a repeated click
// can never stop the next answer that started meanwhile: the server answers
// "already_ended" and nothing changes. It goes over the session's WebSocket when that is
// open (a `stop` frame, answered by a `stopped` frame), else POST sessions/{id}/stop.

import { REQUEST_TIMEOUT_MS } from "./api.js";

// A `stop` frame waits for its `stopped` frame as long as a REST call waits for its answer;
// then the page asks over REST. Stop is idempotent, so asking twice is safe.
const SOCKET_REPLY_MS = REQUEST_TIMEOUT_MS;

/** The answer of the open session that is streaming now, if any. */
export function streamingAnswer(view) {
  if (!view) return null;
  let streaming = null;
  for (const message of view.messages.values()) {
    if (message.role === "agent" && !message.done && message.generation === view.generation) {
      if (streaming === null || message.seq > streaming.seq) streaming = message;
    }
  }
  return streaming;
}

export class SessionActions {
  constructor(page) {
    this.page = page;
    // messageId -> {state, error}: the Stops this page asked for, "stopping" while on their
    // way, "stopped" once the server stopped the answer, or "failed".
    this.stops = new Map();
    this.downloading = false;
    this.downloadError = null;
  }

  bind() {
    const $ = this.page.$;
    $("stop").addEventListener("click", () => {
      const answer = streamingAnswer(this.page.view);
      if (answer) this.stop(answer.messageId);
    });
    $("download").addEventListener("click", () => this.download());
  }

  /** A new session is open: what was asked about the old one no longer shows. */
  reset() {
    this.stops.clear();
    this.downloadError = null;
  }

  /** What to show next to an answer about its Stop: null, "stopping" or an error text. */
  stopNote(message) {
    const entry = message.done ? undefined : this.stops.get(message.messageId);
    if (!entry) return null;
    // Stopped, but its message_end is not here yet: still "stopping" to the user.
    return entry.state === "failed" ? entry.error : "stopping";
  }

  async stop(messageId) {
    const page = this.page;
    const sessionId = page.view && page.view.sessionId;
    const entry = this.stops.get(messageId);
    if (!sessionId || (entry && entry.state === "stopping")) return; // already on its way
    this.stops.set(messageId, { state: "stopping", error: null });
    page.render();
    let answer;
    try {
      answer = (await this.stopOverSocket(messageId)) || (await this.stopOverRest(messageId));
    } catch {
      answer = { error: "the server is unreachable" };
    }
    if (!page.view || page.view.sessionId !== sessionId) return; // another session since
    if (answer.error) {
      this.stops.set(messageId, { state: "failed", error: `could not stop: ${answer.error}` });
    } else if (answer.reason === "stopped") {
      this.stops.set(messageId, { state: "stopped", error: null });
    } else {
      // Nothing was running under that id (it ended, or this page is behind): its own
      // message_end tells the rest.
      this.stops.delete(messageId);
    }
    page.render();
  }

  /** The `stopped` frame answering a `stop` frame, or null when the socket is not open
   * or closes (or stays silent) before it answers. */
  stopOverSocket(messageId) {
    const socket = this.page.live && this.page.live.openSocket;
    if (!socket) return Promise.resolve(null);
    return new Promise((resolve) => {
      const done = (answer) => {
        clearTimeout(timer);
        socket.removeEventListener("message", onMessage);
        socket.removeEventListener("close", onClose);
        resolve(answer);
      };
      const onMessage = (event) => {
        let frame;
        try {
          frame = JSON.parse(event.data);
        } catch {
          return;
        }
        if (frame && frame.type === "stopped" && frame.messageId === messageId) done(frame);
      };
      const onClose = () => done(null);
      const timer = setTimeout(() => done(null), SOCKET_REPLY_MS);
      socket.addEventListener("message", onMessage);
      socket.addEventListener("close", onClose);
      socket.send(JSON.stringify({ type: "stop", messageId }));
    });
  }

  async stopOverRest(messageId) {
    const id = encodeURIComponent(this.page.view.sessionId);
    const { status, body } = await this.page.request("POST", `sessions/${id}/stop`, {
      messageId,
    });
    if (status === 200 && body) return body;
    return { error: (body && body.error) || `HTTP ${status}` };
  }

  /** Save the open session's conversation as `<session>.md` (the server's export). */
  async download() {
    const page = this.page;
    const sessionId = page.view && page.view.sessionId;
    if (!sessionId || this.downloading) return;
    this.downloading = true;
    this.downloadError = null;
    page.render();
    let error = null;
    try {
      const path = `sessions/${encodeURIComponent(sessionId)}/export?format=markdown`;
      const { status, body, text } = await page.request("GET", path);
      if (status === 200) save(text, `${sessionId}.md`, "text/markdown");
      else error = (body && body.error) || `HTTP ${status}`;
    } catch {
      error = "the server is unreachable";
    }
    this.downloading = false;
    if (page.view && page.view.sessionId === sessionId) {
      this.downloadError = error && `could not download: ${error}`;
    }
    page.render();
  }
}

function save(text, filename, type) {
  const url = URL.createObjectURL(new Blob([text], { type: `${type};charset=utf-8` }));
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  // The download has taken the blob's URL by now; free it after this task.
  setTimeout(() => URL.revokeObjectURL(url), 0);
}

/** The Stop and Download buttons, and what went wrong with a download, beside it. */
export function drawActions(page) {
  const actions = page.actions;
  const usable = Boolean(page.view) && !page.gone;
  const answer = usable ? streamingAnswer(page.view) : null;
  const stop = page.$("stop");
  stop.hidden = answer === null;
  const note = answer && actions.stopNote(answer);
  stop.disabled = note === "stopping";
  stop.textContent = note === "stopping" ? "Stopping…" : "Stop";
  const download = page.$("download");
  download.disabled = !usable || actions.downloading;
  const error = page.$("download-error");
  error.hidden = !actions.downloadError;
  error.textContent = actions.downloadError || "";
}
