// The transcript's items (protocol/messages.py): a user message with its delivery state,
// an agent answer with its text and end state, or a notice, and their display order.

/** One item: a user message, an agent answer or a notice. */
export class Message {
  constructor(key, role, body, generation, order) {
    Object.assign(this, { key, role, text: body, generation, order, seq: null });
    // user messages
    Object.assign(this, { clientMsgId: null, delivery: null, attempt: null });
    Object.assign(this, { retryInMs: null, status: null, retryOffered: false });
    // agent answers
    Object.assign(this, { messageId: null, replyTo: null, done: false });
    this.error = null; // an answer's agent error, a send failure, or a notice's trouble
    // What each part of an answer came with, so a rewind can cut it back (not shown).
    Object.assign(this, { chunks: [], endSeq: null, errorSeq: null });
  }

  /** Plain data, the form the conformance vectors compare. */
  toDict() {
    const base = {
      key: this.key,
      role: this.role,
      generation: this.generation,
      seq: this.seq,
      text: this.text,
    };
    if (this.role === "user") {
      return Object.assign(base, {
        clientMsgId: this.clientMsgId,
        delivery: this.delivery,
        attempt: this.attempt,
        status: this.status,
        retryInMs: this.retryInMs,
        retryOffered: this.retryOffered,
        error: this.error,
      });
    }
    if (this.role === "agent") {
      return Object.assign(base, {
        messageId: this.messageId,
        replyTo: this.replyTo,
        done: this.done,
        error: this.error,
      });
    }
    return Object.assign(base, { error: this.error });
  }
}

// Session order; messages not yet numbered by the server go last, in send order.
export function displayOrder(a, b) {
  const seqA = a.seq === null ? Infinity : a.seq;
  const seqB = b.seq === null ? Infinity : b.seq;
  const bySeq = seqA === seqB ? 0 : seqA < seqB ? -1 : 1;
  return a.generation - b.generation || bySeq || a.order - b.order;
}
