// Answers shown as Markdown: marked turns an answer's text into HTML, DOMPurify keeps only
// the elements and attributes Markdown makes, and each code block gets a Copy button.
// Both libraries are vendored ES builds (vendor/README.md says which and why). User
// messages are never parsed: render.js shows them as plain text.
//
// What an answer may not do, whatever the model (or a prompt injected into it) writes:
// - raw HTML (<script>, <iframe>, <svg onload>, <img onerror>) is shown as the text it
//   is: marked's html tokens are escaped, and DOMPurify removes anything else anyway;
// - links are http(s), mailto and the like (DOMPurify drops javascript: and data: URLs)
//   and open in a new tab with rel="noopener noreferrer";
// - images are links, never fetched: an answer could otherwise make the browser request
//   any URL with data in it the moment it is shown.

import DOMPurify from "./vendor/dompurify/purify.es.js";
import { Marked } from "./vendor/marked/marked.esm.js";

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
const escapeHtml = (text) => String(text).replace(/[&<>"']/g, (c) => ESCAPES[c]);

const markdown = new Marked({
  gfm: true,
  // A chat convention (and what a user typing Shift+Enter means): a newline is a break.
  breaks: true,
  renderer: {
    html: ({ text }) => escapeHtml(text),
    image: ({ href, text }) => `<a href="${escapeHtml(href)}">${escapeHtml(text || href)}</a>`,
  },
});

// Exactly what marked produces for Markdown, minus images and raw HTML.
const SANITIZE = {
  ALLOWED_TAGS: [
    "a", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr",
    "input", "li", "ol", "p", "pre", "strong", "table", "tbody", "td", "th", "thead", "tr",
    "ul",
  ],
  ALLOWED_ATTR: ["align", "checked", "class", "disabled", "href", "start", "title", "type"],
  ALLOW_DATA_ATTR: false,
  RETURN_DOM_FRAGMENT: true,
};

// An instance of our own, so its hooks apply to answers only.
const purifier = typeof window === "undefined" ? null : DOMPurify(window);
if (purifier && purifier.isSupported) {
  purifier.addHook("afterSanitizeAttributes", (node) => {
    if (node.tagName === "A" && node.hasAttribute("href")) {
      node.setAttribute("target", "_blank");
      node.setAttribute("rel", "noopener noreferrer");
    }
    if (node.tagName === "INPUT") node.setAttribute("disabled", ""); // task-list boxes
  });
}

/** Markdown text -> a sanitized DocumentFragment, every code block with a Copy button. */
export function renderMarkdown(text) {
  if (!purifier || !purifier.isSupported) {
    // No sanitizer, no markup: the text as it is.
    const fragment = document.createDocumentFragment();
    fragment.append(text);
    return fragment;
  }
  const fragment = purifier.sanitize(markdown.parse(text, { async: false }), SANITIZE);
  for (const pre of fragment.querySelectorAll("pre")) addCopyButton(pre);
  return fragment;
}

function addCopyButton(pre) {
  const block = document.createElement("div");
  block.className = "code-block";
  const button = document.createElement("button");
  button.type = "button";
  button.className = "copy";
  button.textContent = "Copy";
  button.title = "Copy the code";
  button.addEventListener("click", async () => {
    const code = pre.querySelector("code") || pre;
    let label = "Copied";
    try {
      // marked ends a block's code with the newline before its closing fence.
      await copyText(code.textContent.replace(/\n$/, ""));
    } catch {
      label = "Copy failed";
    }
    button.textContent = label;
    button.dataset.state = label === "Copied" ? "copied" : "failed";
    setTimeout(() => {
      button.textContent = "Copy";
      delete button.dataset.state;
    }, 2000);
  });
  pre.replaceWith(block);
  block.append(button, pre);
}

async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    await navigator.clipboard.writeText(text);
    return;
  }
  // Not a secure context (a server reached over plain http by its name): no Clipboard
  // API, so the older way, through a selection.
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.style.position = "fixed";
  area.style.opacity = "0";
  document.body.append(area);
  area.select();
  const copied = document.execCommand("copy");
  area.remove();
  if (!copied) throw new Error("the browser refused to copy");
}

/** How many times answers were rendered (for chatbridge.debug() and the tests). */
export const renderStats = { renders: 0 };

/**
 * One answer's rendered body. While the answer streams it is rendered at most once per
 * animation frame, and a long answer (which costs more to render) less often still: at
 * most a fifth of the time goes to rendering it, so a long answer streamed in thousands
 * of deltas costs a bounded share of the CPU. An answer that ended is rendered at once.
 */
export class MarkdownBody {
  constructor() {
    this.element = document.createElement("div");
    this.element.className = "body";
    this.text = "";
    this.shown = null;
    this.frame = null;
    this.costMs = 0;
    this.renderedAt = -Infinity;
  }

  show(text, final) {
    this.text = text;
    if (final) {
      if (this.frame !== null) cancelAnimationFrame(this.frame);
      this.frame = null;
      this.draw();
    } else if (this.frame === null && text !== this.shown) {
      this.frame = requestAnimationFrame(() => this.tick());
    }
  }

  tick() {
    this.frame = null;
    if (this.text === this.shown) return;
    if (performance.now() - this.renderedAt < 4 * this.costMs) {
      this.frame = requestAnimationFrame(() => this.tick());
      return;
    }
    this.draw();
  }

  draw() {
    if (this.text === this.shown) return;
    const started = performance.now();
    // Drawn after the transcript placed its scroll: keep a reader at the bottom there.
    const list = this.element.closest("#transcript");
    const atBottom = list && list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    this.element.replaceChildren(renderMarkdown(this.text));
    if (atBottom) list.scrollTop = list.scrollHeight;
    this.shown = this.text;
    this.renderedAt = performance.now();
    this.costMs = this.renderedAt - started;
    renderStats.renders += 1;
  }
}
