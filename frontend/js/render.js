// Answers are Markdown written by a model, so they are untrusted: every piece of
// HTML that reaches the page goes through DOMPurify first. The page's
// Content-Security-Policy (routes/pages.py) is the second line of defence.
import { Marked } from "../vendor/marked.esm.js";
import DOMPurify from "../vendor/purify.es.mjs";

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
  FORBID_ATTR: ["style"],
};

/** Markdown text -> a sanitised DocumentFragment, safe to insert anywhere. */
export function renderMarkdown(text) {
  const html = markdown.parse(text ?? "", { async: false });
  return DOMPurify.sanitize(html, { ...SANITIZE, RETURN_DOM_FRAGMENT: true });
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
    element.replaceChildren(renderMarkdown(element._pendingText));
  });
}

/** Render immediately (used when an answer ends, so the final text is exact). */
export function renderNow(element, text) {
  element._pendingText = text;
  element.replaceChildren(renderMarkdown(text));
}
