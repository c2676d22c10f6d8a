// One answer on screen: its text rendered as Markdown, its state, its model,
// and (while it runs) the Follower that streams it in.
import { getChannel } from "./api.js";
import { copyText, renderNow, scheduleRender } from "./render.js";
import { Follower } from "./stream.js";

/** What each state looks like to a person. `running` is shown as waiting until text arrives. */
const STATE_LABELS = {
  waiting: "Waiting for the model…",
  streaming: "Writing…",
  reconnecting: "Connection lost — reconnecting…",
  done: "Done",
  error: "Error",
  cancelled: "Stopped",
  interrupted: "Interrupted",
  lost: "Unavailable",
};

const shown = new Set();  // answers on screen: the service worker asks before notifying

/** True when this page shows `channel` and is in view (then no notification is needed). */
export const showsChannel = (channel) => document.visibilityState === "visible" && shown.has(channel);

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** A question as the user typed it: shown as text, never as HTML. */
export function questionElement(text) {
  const article = document.createElement("article");
  article.className = "message user";
  article.setAttribute("aria-label", "Question");
  const body = document.createElement("p");
  body.className = "plain";
  body.textContent = text;
  article.append(body);
  return article;
}

function actionButton(action, label, name) {
  const button = element("button", "small action", label);
  button.type = "button";
  button.dataset.action = action;
  if (name && name !== label) button.setAttribute("aria-label", name);
  return button;
}

export class AnswerView {
  /**
   * `text` is what is known of the answer already (for a running answer, a
   * snapshot); `status` is the API's channel status or "waiting".
   */
  constructor({ channel = null, text = "", status = "waiting", model = null, question = "", onChange = () => {} }) {
    this.channel = channel;
    this.question = question;   // the question this answers, for "Regenerate" and "Retry"
    this.followUps = [];        // what the page offers after this answer: [{action, label, name}]
    this.snapshot = text;
    this.text = "";
    this.model = model;
    this.onChange = onChange;
    this.follower = null;
    this.element = element("article", "message assistant");
    this.element.setAttribute("aria-label", "Answer");
    const header = element("header", "message-meta");
    this.modelBadge = element("span", "model");
    this.stateBadge = element("span", "state");
    this.stateBadge.setAttribute("role", "status");
    header.append(this.modelBadge, this.stateBadge);
    this.body = element("div", "markdown");
    this.detail = element("p", "state-detail");
    this.detail.hidden = true;
    this.actions = element("div", "answer-actions");
    this.actions.setAttribute("role", "group");
    this.actions.setAttribute("aria-label", "Answer actions");
    this.copyStatus = element("span", "copy-status visually-hidden");
    this.copyStatus.setAttribute("role", "status");
    this.element.append(header, this.body, this.detail, this.actions, this.copyStatus);
    this.element.addEventListener("click", (e) => this.clicked(e));
    if (channel) this.setChannel(channel);
    this.showModel();
    this.setState(status === "running" ? (text ? "streaming" : "waiting") : status);
    if (text) renderNow(this.body, text);
  }

  get running() {
    return ["waiting", "streaming", "reconnecting"].includes(this.state);
  }

  /** The whole answer as far as it is known: the events' text once it has caught up with the snapshot. */
  get visibleText() {
    return this.text.length >= this.snapshot.length ? this.text : this.snapshot;
  }

  setChannel(channel) {
    this.channel = channel;
    this.element.dataset.channel = channel;
    shown.add(channel);
  }

  showModel() {
    this.modelBadge.textContent = this.model ? `Model: ${this.model}` : "";
    this.modelBadge.hidden = !this.model;
  }

  setState(state, detail = "") {
    this.state = state;
    this.element.dataset.state = state;
    this.stateBadge.textContent = STATE_LABELS[state] ?? state;
    this.detail.textContent = detail;
    this.detail.hidden = !detail;
    this.showActions();
    this.onChange(this);
  }

  /** Follow-ups (regenerate, retry, continue) come from the page; copy is every finished answer's. */
  offer(followUps) {
    const same = followUps.length === this.followUps.length
      && followUps.every((f, i) => f.action === this.followUps[i].action);
    this.followUps = followUps;
    if (!same) this.showActions();
  }

  showActions() {
    const buttons = [];
    if (!this.running && this.visibleText) {
      buttons.push(actionButton("copy-answer", "Copy", "Copy the answer"));
    }
    if (!this.running) {
      for (const { action, label, name } of this.followUps) buttons.push(actionButton(action, label, name));
    }
    this.actions.replaceChildren(...buttons);
    this.actions.hidden = buttons.length === 0;
  }

  async clicked(e) {
    const button = e.target.closest("button[data-action]");
    if (!button || !this.element.contains(button)) return;
    const action = button.dataset.action;
    if (action === "copy-code") {
      const code = button.closest(".code-block")?.querySelector("pre")?.textContent ?? "";
      await this.copy(button, code.replace(/\n$/, ""));
    } else if (action === "copy-answer") {
      await this.copy(button, this.visibleText);
    } else {
      this.element.dispatchEvent(new CustomEvent("answer-action", { bubbles: true, detail: { action, view: this } }));
    }
  }

  async copy(button, text) {
    let message;
    try {
      await copyText(text);
      message = "Copied";
    } catch {
      message = "Copy failed";
    }
    // The label changes for sighted users; the status line tells screen readers.
    const label = button.textContent;
    button.textContent = message;
    button.dataset.copied = message === "Copied" ? "true" : "false";
    this.copyStatus.textContent = message === "Copied" ? "Copied to the clipboard." : "Could not copy.";
    clearTimeout(button._restore);
    button._restore = setTimeout(() => {
      if (button.isConnected) { button.textContent = label; delete button.dataset.copied; }
      this.copyStatus.textContent = "";
    }, 1500);
  }

  /** Stream the answer from its first event; the snapshot stays on screen until the replay passes it. */
  follow(transport) {
    this.follower = new Follower(this.channel, {
      transport,
      onEvent: (type, data) => this.apply(type, data),
      onState: (state, reason) => this.connectionState(state, reason),
    }).start();
  }

  apply(type, data) {
    if (type === "meta") {
      this.model = data.model ?? this.model;
      this.showModel();
    } else if (type === "delta") {
      this.text += data.content ?? "";
      if (this.state !== "streaming") this.setState("streaming");
      scheduleRender(this.body, this.visibleText);
    } else if (type === "done") {
      this.finish("done");
    } else if (type === "error") {
      this.finish("error", data.message ?? "The model failed.");
    } else if (type === "cancelled") {
      this.finish("cancelled");
    } else if (type === "interrupted") {
      this.finish("interrupted", "The server stopped before the answer was complete.");
    }
  }

  finish(state, detail = "") {
    this.snapshot = "";
    renderNow(this.body, this.text);
    this.setState(state, detail);
  }

  connectionState(state, reason) {
    if (state === "reconnecting" && this.running) this.setState("reconnecting");
    else if (state === "live" && this.state === "reconnecting") this.setState(this.visibleText ? "streaming" : "waiting");
    else if (state === "lost") this.setState("lost", reason || "This answer is no longer available.");
  }

  /** Failed before any channel existed (the submit itself was refused). */
  fail(message) {
    this.setState("error", message);
  }

  async stop() {
    await this.follower?.cancel();
  }

  /** Fill in the model for an answer that is not streamed (finished before the page opened). */
  async loadModel() {
    if (this.model || !this.channel) return;
    try {
      this.model = (await getChannel(this.channel)).model ?? null;
      this.showModel();
    } catch { /* the badge is a nicety; the answer itself is already on screen */ }
  }

  dispose() {
    this.follower?.close();
    if (this.channel) shown.delete(this.channel);
  }
}
