// The transcript reducer, free of DOM: session events and outbox events in, the
// conversation out. The same rules as protocol/transcript.py, held to the same vectors
// (docs/client-rules.md, "transcript"):
//
// - seq order: an event at or below `lastSeq` is a duplicate and ignored; one past a hole
//   is held back and `gap` says which seqs to fetch from history; the held events apply,
//   in order, once the hole is filled; what history no longer has is skipped.
// - a server that rewound (its lastSeq behind what was shown) loses what came after: those
//   entries go (an answer begun before is cut back to what the server kept), and our own
//   messages among them become failed, offered a Retry.
// - a delivery state changes only on evidence about that message (its own send_* events,
//   its user_message); a final failure is offered a Retry exactly when it is `retryable`.
// - "thinking" is derived, never stored: a message of ours still pending, a user message
//   not yet answered, or an answer still streaming, while the session lives.

import { Message, displayOrder } from "./messages.js";
import { outcomeOf } from "./outbox.js";

export const LOST_BY_SERVER = "lost by the server";
// How an answer can end: message_end's reason on the wire.
const ENDINGS = new Set(["complete", "stopped", "error", "interrupted"]);

function int(value) {
  return Number.isInteger(value) ? value : null;
}

function text(value) {
  return typeof value === "string" && value ? value : null;
}

function str(value, fallback = "") {
  return value === undefined || value === null ? fallback : String(value);
}

/** The reducer's state for one session id; `apply` takes any input kind. */
export class Transcript {
  constructor(rules, sessionId = null) {
    this.rules = rules;
    this.sessionId = sessionId;
    this.generation = 0;
    this.messages = new Map(); // key -> Message
    this.own = new Map(); // clientMsgId -> the message sent from here
    this.nextOrder = 0;
    this.touched = { keys: new Set(), reordered: false };
    // For the page's debug view: every applied seq, and the duplicates dropped.
    this.appliedSeqs = [];
    this.duplicates = 0;
    this.resetSession();
  }

  resetSession() {
    this.lastSeq = null; // null: nothing seen yet, the first seq starts it
    this.ended = null;
    this.rewound = null;
    this.held = new Map(); // seq -> event past a hole
    // Seqs of user messages not yet answered, those answered (so a late receipt cannot
    // bring "thinking" back), and those whose answer started.
    this.unanswered = new Set();
    this.answered = new Set();
    this.started = new Set();
    this.openAnswers = new Set();
  }

  // -- the one entry point --------------------------------------------------------------

  /** Apply one input: {kind: "event"|"outbox"|"history"|"watched"|"skip_gap"|"lost"|…}. */
  apply(item) {
    this.touched = { keys: new Set(), reordered: false };
    switch (item.kind) {
      case "event":
        this.sessionEvent(item.event);
        break;
      case "outbox":
        this.outboxEvent(item.event);
        break;
      case "watched":
        this.watched(Number(item.lastSeq));
        break;
      case "history":
        this.history(item.events);
        break;
      case "skip_gap":
        this.skipGap();
        break;
      case "lost":
        this.lost(str(item.reason || null, "session_unknown"));
        break;
      case "new_session":
        this.newSession(str(item.text || null, ""));
        break;
      default:
        throw new Error(`unknown transcript input: ${JSON.stringify(item.kind)}`);
    }
    return this.touched;
  }

  // -- session events ---------------------------------------------------------------------

  /** A session event as the wire carries it. */
  sessionEvent(event) {
    const seq = int(event.seq);
    if (seq === null || (this.sessionId !== null && event.sessionId !== this.sessionId)) {
      return this.touched;
    }
    if (this.lastSeq !== null && seq <= this.lastSeq) {
      this.duplicates += 1; // already shown
      return this.touched;
    }
    if (this.lastSeq !== null && seq > this.lastSeq + 1) {
      if (this.held.has(seq)) this.duplicates += 1;
      else this.held.set(seq, { ...event }); // past a hole: wait for history
      return this.touched;
    }
    this.applyEvent(event, seq);
    this.drainHeld();
    return this.touched;
  }

  /** The hole to fill from history: seqs after `after` and before `before` are missing. */
  get gap() {
    if (this.held.size === 0 || this.lastSeq === null) return null;
    return { after: this.lastSeq, before: Math.min(...this.held.keys()) };
  }

  /** History's answer for a gap: apply its events; a hole it cannot fill is skipped. */
  history(events) {
    for (const event of events) this.sessionEvent(event);
    this.skipGap();
  }

  /** History cannot fill the hole (trimmed): go on from the first held event. */
  skipGap() {
    if (this.held.size === 0) return;
    this.lastSeq = Math.min(...this.held.keys()) - 1;
    this.drainHeld();
  }

  drainHeld() {
    while (this.lastSeq !== null && this.held.has(this.lastSeq + 1)) {
      const seq = this.lastSeq + 1;
      const event = this.held.get(seq);
      this.held.delete(seq);
      this.applyEvent(event, seq);
    }
    if (this.lastSeq !== null) {
      for (const stale of [...this.held.keys()]) if (stale <= this.lastSeq) this.held.delete(stale);
    }
  }

  applyEvent(event, seq) {
    this.lastSeq = seq;
    this.appliedSeqs.push(seq);
    switch (event.type) {
      case "user_message":
        this.userMessage(event, seq);
        break;
      case "message_start":
        this.messageStart(event, seq);
        break;
      case "block_delta": {
        const answer = this.answer(event, seq);
        answer.chunks.push([seq, str(event.text)]);
        answer.text += str(event.text);
        break;
      }
      case "error":
        this.agentError(event, seq);
        break;
      case "message_end":
        this.messageEnd(event, seq);
        break;
      case "session_ended":
        this.ended = "session_ended";
        break;
      default:
        break; // a newer server's event type: ignore it
    }
  }

  userMessage(event, seq) {
    const clientMsgId = str(event.clientMsgId);
    let message = this.own.get(clientMsgId);
    if (message === undefined) {
      message = this.add("user", `u${this.generation}:${seq}`, str(event.text));
      message.seq = seq;
      message.clientMsgId = clientMsgId;
    } else {
      // Evidence about this message: it is in the session, whatever the outbox said.
      message.generation = this.generation;
      message.seq = seq;
      message.delivery = "delivered";
      message.error = message.retryInMs = null;
      message.retryOffered = false;
      this.touch(message, true);
    }
    if (!this.answered.has(seq)) this.unanswered.add(seq);
  }

  messageStart(event, seq) {
    const message = this.answer(event, seq);
    let replyTo = int(event.replyTo);
    if (replyTo === null) {
      // Without replyTo: the agent answers in order, so it is the oldest unanswered.
      const waiting = [...this.unanswered].filter((s) => !this.started.has(s));
      waiting.sort((a, b) => a - b);
      replyTo = waiting.length > 0 ? waiting[0] : null;
    }
    message.replyTo = replyTo;
    if (replyTo !== null) this.started.add(replyTo);
    this.openAnswers.add(message.key);
  }

  answer(event, seq) {
    const messageId = str(event.messageId);
    const key = `a${this.generation}:${messageId}`;
    let message = this.messages.get(key);
    if (message === undefined) {
      // Also for a delta whose message_start was trimmed from the history.
      message = this.add("agent", key, "");
      message.seq = seq;
      message.messageId = messageId;
    }
    this.touch(message);
    return message;
  }

  agentError(event, seq) {
    const body = str(event.message || null, "the agent failed");
    if (event.messageId) {
      const answer = this.answer(event, seq);
      answer.error = body;
      answer.errorSeq = seq;
    } else {
      const notice = this.add("notice", `n${this.generation}:${seq}`, body);
      notice.seq = seq;
      notice.error = body;
    }
  }

  messageEnd(event, seq) {
    const message = this.answer(event, seq);
    message.done = true;
    message.endSeq = seq;
    // message_end's reason; a server before reasons: error if an error named it, else complete.
    message.ended = ENDINGS.has(event.reason) ? event.reason : message.error !== null ? "error" : "complete";
    this.openAnswers.delete(message.key);
    if (message.replyTo !== null) {
      this.unanswered.delete(message.replyTo);
      this.answered.add(message.replyTo);
    }
  }

  // -- outbox events ----------------------------------------------------------------------

  /** send_pending, send_failed or send_accepted of a message sent from here. */
  outboxEvent(event) {
    const sessionId = "sessionId" in event ? event.sessionId : this.sessionId;
    if (this.sessionId !== null && sessionId !== this.sessionId) return this.touched;
    const clientMsgId = String(event.clientMsgId);
    let message = this.own.get(clientMsgId);
    if (message === undefined) {
      message = this.add("user", `u:${clientMsgId}`, str(event.text));
      message.clientMsgId = clientMsgId;
      this.own.set(clientMsgId, message);
    }
    this.touch(message);
    if (event.type === "send_pending") {
      // A new message, or the user's Retry: in flight again, in the session as it is now.
      if (message.generation !== this.generation) {
        message.generation = this.generation;
        message.seq = null;
        this.touched.reordered = true;
      }
      message.delivery = "pending";
      message.error = message.retryInMs = message.status = message.attempt = null;
      message.retryOffered = false;
    } else if (message.delivery === "delivered") {
      // The session already showed it; a lost HTTP answer (and its retry's failure)
      // changes nothing for the user.
      if (event.type === "send_accepted") this.noteReceipt(message, int(event.seq));
    } else if (event.type === "send_accepted") {
      message.delivery = "delivered";
      message.error = message.retryInMs = null;
      this.noteReceipt(message, int(event.seq));
    } else {
      message.error = text(event.error);
      message.status = int(event.status);
      message.attempt = int(event.attempt);
      if (event.willRetry) {
        message.delivery = "retrying";
        message.retryInMs = typeof event.retryInMs === "number" ? event.retryInMs : null;
      } else {
        message.delivery = "failed";
        message.retryInMs = null;
        message.retryOffered = this.retryable(event);
      }
    }
    return this.touched;
  }

  noteReceipt(message, seq) {
    if (seq === null || message.generation !== this.generation) return;
    if (message.seq !== seq) {
      message.seq = seq;
      this.touched.reordered = true;
    }
    if (!this.answered.has(seq)) this.unanswered.add(seq);
  }

  // A final failure is offered a Retry when the outbox says it is retryable; without
  // that flag (an older producer) the same table decides from the status.
  retryable(event) {
    if (typeof event.retryable === "boolean") return event.retryable;
    return outcomeOf(this.rules, int(event.status)) !== "refused";
  }

  // -- facts about the session ------------------------------------------------------------

  /** A (re)watch answered: the server's newest seq. Behind what we showed: it rewound. */
  watched(lastSeq) {
    if (this.lastSeq === null || lastSeq >= this.lastSeq) return;
    this.rewound = { from: this.lastSeq, to: lastSeq };
    this.lastSeq = lastSeq;
    this.held.clear();
    for (const seqs of [this.unanswered, this.answered, this.started]) {
      for (const seq of [...seqs]) if (seq > lastSeq) seqs.delete(seq);
    }
    for (const message of [...this.messages.values()]) {
      if (message.generation !== this.generation || message.seq === null) continue;
      if (message.seq <= lastSeq) {
        if (message.role === "agent") this.cutBack(message, lastSeq);
        continue;
      }
      this.touch(message, true);
      if (this.own.get(message.clientMsgId) === message) {
        message.seq = null;
        message.delivery = "failed";
        message.error = LOST_BY_SERVER;
        message.retryOffered = true;
        message.retryInMs = message.status = null;
      } else {
        this.messages.delete(message.key);
        this.openAnswers.delete(message.key);
        const replyTo = message.replyTo;
        if (message.role === "agent" && replyTo !== null && replyTo <= lastSeq) {
          // Its question survived, its answer did not: it waits for one again.
          this.started.delete(replyTo);
          this.answered.delete(replyTo);
          this.unanswered.add(replyTo);
        }
      }
    }
  }

  /** An answer that began before the rewind keeps only what the server kept. */
  cutBack(answer, lastSeq) {
    const kept = answer.chunks.filter(([seq]) => seq <= lastSeq);
    const endLost = (answer.endSeq ?? 0) > lastSeq;
    const errorLost = (answer.errorSeq ?? 0) > lastSeq;
    if (kept.length === answer.chunks.length && !endLost && !errorLost) return;
    this.touch(answer);
    answer.chunks = kept;
    answer.text = kept.map(([, body]) => body).join("");
    if (errorLost) answer.error = answer.errorSeq = null;
    if (endLost) {
      answer.done = false;
      answer.endSeq = null;
      answer.ended = null;
      this.openAnswers.add(answer.key);
      if (answer.replyTo !== null) {
        this.answered.delete(answer.replyTo);
        this.unanswered.add(answer.replyTo);
      }
    }
  }

  /** The session no longer exists (404 session_unknown, or it ended). */
  lost(reason) {
    this.ended = reason;
  }

  /** The session was started again under the same id: a fresh conversation follows. */
  newSession(notice) {
    this.generation += 1;
    this.resetSession();
    // seq 0: first in its generation, before anything the new session numbers.
    const start = this.add("notice", `n${this.generation}:start`, notice);
    start.seq = 0;
  }

  // -- outputs ----------------------------------------------------------------------------

  /** The messages in display order. */
  ordered() {
    return [...this.messages.values()].sort(displayOrder);
  }

  /** True while the agent works (or is about to) on a message of the live session. */
  get thinking() {
    if (this.ended !== null) return false;
    for (const m of this.own.values()) {
      if (m.delivery === "pending" && m.generation === this.generation) return true;
    }
    return this.unanswered.size > 0 || this.openAnswers.size > 0;
  }

  /** Everything shown, as plain data (the conformance vectors' expected output). */
  snapshot() {
    return {
      generation: this.generation,
      lastSeq: this.lastSeq,
      ended: this.ended,
      gap: this.gap,
      rewound: this.rewound,
      thinking: this.thinking,
      // An answer's end state (`ended`, null while it streams) is set here, not in messages.js.
      messages: this.ordered().map((m) =>
        m.role === "agent" ? { ...m.toDict(), ended: m.ended ?? null } : m.toDict(),
      ),
    };
  }

  // -- internals --------------------------------------------------------------------------

  add(role, key, body) {
    const message = new Message(key, role, body, this.generation, this.nextOrder++);
    this.messages.set(key, message);
    this.touch(message, true);
    return message;
  }

  touch(message, reordered = false) {
    this.touched.keys.add(message.key);
    if (reordered) this.touched.reordered = true;
  }
}
