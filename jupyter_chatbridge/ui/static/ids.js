// Identities the page makes itself: the tab's connection id (cid), kept per tab in
// sessionStorage (in memory where storage throws), the guard that keeps a duplicated tab
// from sharing it, and the clientMsgId of each message sent.

const CID_PATTERN = /^cid-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** A random canonical UUID; crypto.randomUUID only exists in secure contexts (https, localhost). */
export function newUuid() {
  if (typeof crypto.randomUUID === "function") return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40; // version 4
  b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
  const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** A fresh connection id. */
export function newCid() {
  return `cid-${newUuid()}`;
}

/** A fresh clientMsgId: the server deduplicates sends on it, so it is made once per message. */
export function newClientMsgId() {
  return `m-${newUuid()}`;
}

let memoryCid = null;

/**
 * The tab's stable connection id, made once. sessionStorage keeps it per tab and across
 * reloads; where storage throws (private browsing, storage disabled) it lives in memory
 * and lasts as long as the page.
 */
export function tabCid(key, getStorage = () => window.sessionStorage) {
  try {
    const storage = getStorage();
    const known = storage.getItem(key);
    if (known && CID_PATTERN.test(known)) return known.toLowerCase();
    const cid = newCid();
    storage.setItem(key, cid);
    return cid;
  } catch {
    memoryCid = memoryCid || newCid();
    return memoryCid;
  }
}

/**
 * Keeps the cid one per tab when a tab is duplicated: the browser copies sessionStorage,
 * cid included, into the new tab, and two tabs on one cid would take the connection from
 * each other forever. Each page announces its cid on a BroadcastChannel; a page that
 * hears its own cid from another tab answers "taken", and the newcomer makes a fresh cid.
 * `settled` resolves when the page may connect: after `waitMs` without an answer, or
 * once a clash was handled (an answer arriving later still calls `onClash`).
 */
export class CidGuard {
  constructor(channelName, getCid, onClash, waitMs = 100) {
    this.tab = newUuid();
    let channel = null;
    try {
      channel = new BroadcastChannel(channelName);
    } catch {
      this.settled = Promise.resolve(); // no BroadcastChannel: nothing to compare with
      return;
    }
    let settle;
    this.settled = new Promise((resolve) => {
      settle = resolve;
      setTimeout(resolve, waitMs);
    });
    channel.addEventListener("message", ({ data }) => {
      if (!data || data.cid !== getCid()) return;
      if (data.type === "hello" && data.tab !== this.tab) {
        channel.postMessage({ type: "taken", cid: data.cid, to: data.tab });
      } else if (data.type === "taken" && data.to === this.tab) {
        onClash();
        settle();
      }
    });
    channel.postMessage({ type: "hello", cid: getCid(), tab: this.tab });
    this.channel = channel;
  }
}

/** A value this tab remembers across reloads, or null (also where storage throws). */
export function storageGet(key) {
  try {
    return window.sessionStorage.getItem(key);
  } catch {
    return null;
  }
}

/** Remember (or, with null, forget) a value for this tab. */
export function storageSet(key, value) {
  try {
    if (value === null) window.sessionStorage.removeItem(key);
    else window.sessionStorage.setItem(key, value);
  } catch {
    // Private browsing: the page simply forgets on reload.
  }
}
