// Answers are Markdown written by a model, so they are untrusted: every piece of
// HTML that reaches the page goes through DOMPurify first. The page's
// Content-Security-Policy (routes/pages.py) is the second line of defence.
// What is added after sanitising (code highlighting, labels, copy buttons,
// scroll wrappers) is built by this module from text, never from the model's HTML.
import { Marked } from "../vendor/marked.esm.js";
import DOMPurify from "../vendor/purify.es.mjs";
import hljs from "../vendor/highlight.es.min.js";

const markdown = new Marked({ gfm: true, breaks: false });

// Links a model writes open in a new tab and cannot reach back into this page.
DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A" && node.hasAttribute("href")) {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer nofollow");
  }
});

const SANITIZE = {
  USE_PROFILES: { html: true },
  FORBID_TAGS: ["style", "form", "input", "button", "textarea", "select", "iframe", "object", "embed"],
  FORBID_ATTR: ["style", "tabindex", "role"],
};

// Highlighting a huge block on every streamed token would stall the page.
const HIGHLIGHT_MAX_CHARS = 20_000;

/** The language a fenced block names (```python), as the model wrote it, or "". */
function languageOf(code) {
  const match = /(?:^|\s)language-([\w#+.-]+)/.exec(code.className);
  return match ? match[1].toLowerCase() : "";
}

function highlight(code, language) {
  const text = code.textContent;
  if (text.length > HIGHLIGHT_MAX_CHARS) return;
  let result;
  try {
    result = language && hljs.getLanguage(language)
      ? hljs.highlight(text, { language, ignoreIllegals: true })
      : null;
  } catch {
    result = null;
  }
  if (!result) return;
  // highlight.js escapes the code text it wraps: its output holds only its own <span class>.
  code.innerHTML = result.value;
  code.classList.add("hljs");
}

/** A fenced block becomes a labelled, highlighted, keyboard-scrollable block with a copy button. */
function decorateCodeBlock(pre) {
  const code = pre.querySelector("code");
  const language = code ? languageOf(code) : "";
  if (code) highlight(code, language);
  const label = language || "code";
  const figure = document.createElement("div");
  figure.className = "code-block";
  const bar = document.createElement("div");
  bar.className = "code-bar";
  const name = document.createElement("span");
  name.className = "code-language";
  name.textContent = label;
  const copy = document.createElement("button");
  copy.type = "button";
  copy.className = "copy-code small";
  copy.dataset.action = "copy-code";
  copy.textContent = "Copy";
  copy.setAttribute("aria-label", `Copy ${language ? language + " " : ""}code`);
  bar.append(name, copy);
  // A wide block scrolls sideways: it takes focus so the keyboard can scroll it too.
  pre.tabIndex = 0;
  pre.setAttribute("role", "region");
  pre.setAttribute("aria-label", language ? `${language} code` : "Code");
  pre.replaceWith(figure);
  figure.append(bar, pre);
}

/** A table scrolls sideways inside its own focusable box instead of squeezing its words. */
function wrapTable(table) {
  const box = document.createElement("div");
  box.className = "table-scroll";
  box.tabIndex = 0;
  box.setAttribute("role", "region");
  box.setAttribute("aria-label", "Table");
  table.replaceWith(box);
  box.append(table);
}

/** Markdown text -> a sanitised DocumentFragment, safe to insert anywhere. */
export function renderMarkdown(text) {
  const html = markdown.parse(text ?? "", { async: false });
  const fragment = DOMPurify.sanitize(html, { ...SANITIZE, RETURN_DOM_FRAGMENT: true });
  for (const pre of fragment.querySelectorAll("pre")) decorateCodeBlock(pre);
  for (const table of fragment.querySelectorAll("table")) wrapTable(table);
  return fragment;
}

/**
 * Render `text` into `element`, at most once per animation frame: answers grow
 * a token at a time and re-parsing on every token would waste the CPU.
 */
export function scheduleRender(element, text) {
  element._pendingText = text;
  if (element._renderQueued) return;
  element._renderQueued = true;
  requestAnimationFrame(() => {
    element._renderQueued = false;
    replaceKeepingScroll(element, renderMarkdown(element._pendingText));
  });
}

/** Render immediately (used when an answer ends, so the final text is exact). */
export function renderNow(element, text) {
  element._pendingText = text;
  replaceKeepingScroll(element, renderMarkdown(text));
}

/**
 * Replace the rendered answer, keeping where the reader had scrolled each code
 * block or table sideways, and the keyboard focus if it was on one of them.
 */
function replaceKeepingScroll(element, fragment) {
  const boxes = [...element.querySelectorAll("pre, .table-scroll")];
  const offsets = boxes.map((box) => box.scrollLeft);
  const focused = boxes.indexOf(document.activeElement);
  element.replaceChildren(fragment);
  const fresh = [...element.querySelectorAll("pre, .table-scroll")];
  fresh.forEach((box, i) => { if (offsets[i]) box.scrollLeft = offsets[i]; });
  if (focused >= 0) fresh[focused]?.focus({ preventScroll: true });
}

/** Put `text` on the clipboard; falls back to a selection copy where the Clipboard API is missing (plain http). */
export async function copyText(text) {
  if (navigator.clipboard?.writeText && window.isSecureContext) {
    await navigator.clipboard.writeText(text);
    return;
  }
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.className = "visually-hidden";
  document.body.append(area);
  area.select();
  const ok = document.execCommand("copy");
  area.remove();
  if (!ok) throw new Error("The browser refused to copy.");
}
