// One session's transcript, free of DOM: the session's events in, the messages the page
// shows out (user messages, answers with their text and end state, errors), each event
// applied exactly once and in seq order.

/**
 * The events of one session as the page has them. `offer` takes events in any order and
 * any number of times (a replay after reconnect, a watch replay racing live frames, a
 * history fill) and applies each seq once, in order; anything past a hole waits in
 * `pending` until the hole is filled.
 */
export class SessionView {
  constructor(sessionId) {
    this.sessionId = sessionId;
    this.lastSeq = 0;
    this.knownLastSeq = 0; // the highest seq the server said exists
    this.pending = new Map();
    this.items = [];
    this.answers = new Map(); // messageId -> assistant item
    this.unanswered = []; // seqs of user messages whose answer has not ended
    this.ended = false;
    this.applied = []; // every applied seq, in order (for tests and debugging)
    this.duplicates = 0;
  }

  /** True while the agent owes an answer: "thinking…". */
  get busy() {
    return this.unanswered.length > 0 || [...this.answers.values()].some((a) => !a.done);
  }

  /** True while the page knows of events it has not applied yet. */
  get incomplete() {
    return this.pending.size > 0 || this.lastSeq < this.knownLastSeq;
  }

  /** Offer one event; returns the events it let through, in order. */
  offer(event) {
    const { seq } = event;
    if (!Number.isInteger(seq) || seq <= this.lastSeq || this.pending.has(seq)) {
      this.duplicates += 1;
      return [];
    }
    this.pending.set(seq, event);
    this.knownLastSeq = Math.max(this.knownLastSeq, seq);
    const applied = [];
    while (this.pending.has(this.lastSeq + 1)) {
      const next = this.pending.get(this.lastSeq + 1);
      this.pending.delete(this.lastSeq + 1);
      this.lastSeq += 1;
      this.apply(next);
      applied.push(next);
    }
    return applied;
  }

  /** The server trimmed history before `seq`: continue from there. */
  skipTo(seq) {
    if (seq <= this.lastSeq) return;
    this.lastSeq = seq;
    for (const held of [...this.pending.keys()]) if (held <= seq) this.pending.delete(held);
    this.items.push({ kind: "system", text: "earlier messages were trimmed from the history" });
  }

  apply(event) {
    this.applied.push(event.seq);
    switch (event.type) {
      case "user_message":
        this.items.push({
          kind: "user",
          seq: event.seq,
          clientMsgId: event.clientMsgId,
          text: event.text,
        });
        this.unanswered.push(event.seq);
        break;
      case "message_start": {
        const item = {
          kind: "assistant",
          messageId: event.messageId,
          replyTo: event.replyTo,
          text: "",
          done: false,
          error: null,
        };
        this.items.push(item);
        this.answers.set(event.messageId, item);
        break;
      }
      case "block_delta":
        this.answer(event.messageId).text += event.text;
        break;
      case "message_end": {
        const item = this.answer(event.messageId);
        item.done = true;
        // Answers come one at a time in seq order, so without replyTo it is the oldest.
        const index = this.unanswered.indexOf(item.replyTo);
        this.unanswered.splice(index >= 0 ? index : 0, 1);
        break;
      }
      case "error":
        if (event.messageId && this.answers.has(event.messageId)) {
          this.answers.get(event.messageId).error = event.message;
        } else {
          this.items.push({ kind: "error", text: event.message });
        }
        break;
      case "session_ended":
        this.ended = true;
        this.unanswered = [];
        for (const answer of this.answers.values()) answer.done = true;
        this.items.push({ kind: "system", text: "session ended" });
        break;
      default:
        break; // a newer server's event type: ignore it
    }
  }

  answer(messageId) {
    let item = this.answers.get(messageId);
    if (!item) {
      item = { kind: "assistant", messageId, text: "", done: false, error: null };
      this.items.push(item);
      this.answers.set(messageId, item);
    }
    return item;
  }
}
