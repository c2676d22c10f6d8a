// The chat page: conversations in a sidebar, the current conversation's
// messages, a composer, and the answer of the moment streaming in.
import { ApiError, deleteConversation, getConversation, listConversations, submit } from "./api.js";
import { AnswerView, questionElement } from "./answer-view.js";
import { PushUnavailable, disablePush, enablePush, pushState } from "./push.js";
import { displayTitle, forgetTitle, groupByDate, renameLocally } from "./sidebar-data.js";
import { TRANSPORTS } from "./stream.js";
import { connectServiceWorker } from "./worker-bridge.js";

const STORAGE = { transport: "chime.transport", conversation: "chime.conversation" };
const UNDO_MS = 6000;          // how long a deleted conversation can still be brought back
const NEAR_BOTTOM_PX = 48;     // this close to the end counts as "reading the latest"
const $ = (id) => document.getElementById(id);
const narrow = window.matchMedia("(max-width: 760px)");

const state = {
  conversationId: null,
  conversations: [],  // as the server listed them
  views: [],          // AnswerViews of the conversation on screen
  loadToken: 0,       // the latest openConversation() call; older ones stop quietly
  pendingDelete: null,  // {conversation, wasCurrent, timer}: deleted on screen, not yet on the server
  stick: true,        // the view follows the end of the conversation
  lastScrollTop: 0,
};

function icon(paths) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "icon");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("focusable", "false");
  for (const d of paths) {
    const path = document.createElementNS("http://www.w3.org/2000/svg", "path");
    path.setAttribute("d", d);
    svg.append(path);
  }
  return svg;
}
const ICONS = {
  rename: ["M4 20h4L19 9l-4-4L4 16z", "M14 6l4 4"],
  delete: ["M5 7h14", "M10 7V4h4v3", "M7 7l1 13h8l1-13"],
};

// ---- preferences ----------------------------------------------------------

const transport = () => localStorage.getItem(STORAGE.transport) ?? "sse";

function setUpSettings() {
  const select = $("transport");
  for (const [value, label] of Object.entries(TRANSPORTS)) select.append(new Option(label, value));
  select.value = transport();
  select.addEventListener("change", () => localStorage.setItem(STORAGE.transport, select.value));
  const dialog = $("settings");
  $("open-settings").addEventListener("click", () => dialog.showModal());
  $("close-settings").addEventListener("click", () => dialog.close());
  // A click on the dimmed backdrop lands on the dialog element itself.
  dialog.addEventListener("click", (e) => { if (e.target === dialog) dialog.close(); });
  dialog.addEventListener("close", () => $("open-settings").focus());
}

function rememberConversation(id) {
  state.conversationId = id;
  if (id) localStorage.setItem(STORAGE.conversation, id);
  else localStorage.removeItem(STORAGE.conversation);
}

// ---- following the end of the conversation ----------------------------------

const scroller = () => $("messages");

function nearBottom() {
  const el = scroller();
  return el.scrollHeight - el.scrollTop - el.clientHeight < NEAR_BOTTOM_PX;
}

function scrollToLatest() {
  const el = scroller();
  el.scrollTop = el.scrollHeight;
  state.lastScrollTop = el.scrollTop;
}

function follow() {
  if (state.stick) scrollToLatest();
  $("jump").hidden = state.stick || nearBottom();
}

function setUpAutoscroll() {
  const el = scroller();
  el.addEventListener("scroll", () => {
    // Text arriving never moves scrollTop up: only the reader does. Reaching the end again rejoins.
    if (nearBottom()) state.stick = true;
    else if (el.scrollTop < state.lastScrollTop - 1) state.stick = false;
    state.lastScrollTop = el.scrollTop;
    $("jump").hidden = state.stick || nearBottom();
  }, { passive: true });
  // Runs after each render and before the browser paints it, so the view never lags a frame.
  new MutationObserver(follow).observe(el, { childList: true, subtree: true, characterData: true });
  new ResizeObserver(follow).observe(el);
  $("jump").addEventListener("click", () => {
    state.stick = true;
    scrollToLatest();
    $("jump").hidden = true;
    $("message").focus({ preventScroll: true });
  });
}

function followFromHere() {
  state.stick = true;
  follow();
}

// ---- messages ---------------------------------------------------------------

function clearMessages() {
  for (const view of state.views) view.dispose();
  state.views = [];
  $("messages").replaceChildren($("empty-hint"));
  $("empty-hint").hidden = false;
  updateComposer();
}

function addQuestion(text) {
  $("empty-hint").hidden = true;
  const element = questionElement(text);
  $("messages").append(element);
  return element;
}

function addAnswer(options) {
  const view = new AnswerView({ ...options, onChange: updateComposer });
  state.views.push(view);
  $("messages").append(view.element);
  return view;
}

const runningView = () => state.views.find((view) => view.running && view.channel);

/** What the last answer offers once it has ended; earlier answers offer only a copy. */
function followUpsFor(view) {
  if (!view.channel || !view.question) return [];
  const regenerate = { action: "regenerate", label: "Regenerate", name: "Regenerate the answer" };
  if (view.state === "done") return [regenerate];
  if (view.state === "cancelled") {
    return [{ action: "continue", label: "Continue", name: "Continue the answer" }, regenerate];
  }
  if (["error", "interrupted", "lost"].includes(view.state)) {
    return [{ action: "retry", label: "Retry", name: "Retry the question" }];
  }
  return [];
}

/** Send is for a new question; Stop appears while an answer of this conversation runs. */
function updateComposer() {
  const running = runningView();
  $("stop").hidden = !running;
  $("send").disabled = Boolean(running);
  const last = state.views.at(-1);
  for (const view of state.views) view.offer(view === last && !running ? followUpsFor(view) : []);
}

function showComposerError(message) {
  $("composer-error").textContent = message;
  $("composer-error").hidden = !message;
}

// ---- conversations ------------------------------------------------------------

async function refreshSidebar() {
  try {
    state.conversations = (await listConversations()).conversations;
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 401)) showComposerError(err.message);
    state.conversations = [];
  }
  renderSidebar();
  return state.conversations;
}

function renderSidebar() {
  const query = $("search").value.trim().toLowerCase();
  const pending = state.pendingDelete?.conversation.id;
  const present = state.conversations.filter((c) => c.id !== pending);
  const shown = present.filter((c) => !query || displayTitle(c).toLowerCase().includes(query));
  const groups = groupByDate(shown).map(([name, items], index) => {
    const section = document.createElement("section");
    section.className = "conversation-group";
    const heading = document.createElement("h2");
    heading.className = "group-heading";
    heading.id = `group-${index}`;
    heading.textContent = name;
    section.setAttribute("aria-labelledby", heading.id);
    const list = document.createElement("ul");
    list.className = "conversation-list";
    list.append(...items.map(conversationItem));
    section.append(heading, list);
    return section;
  });
  $("conversations").replaceChildren(...groups);
  $("no-conversations").hidden = present.length > 0;
  $("no-matches").hidden = !(present.length > 0 && shown.length === 0);
  $("no-matches").textContent = shown.length === 0 && query ? `No conversation matches “${$("search").value.trim()}”.` : "";
}

function smallButton(className, label, paths) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = `icon-button small ${className}`;
  button.setAttribute("aria-label", label);
  button.title = label;
  button.append(icon(paths));
  return button;
}

function conversationItem(conversation) {
  const title = displayTitle(conversation);
  const item = document.createElement("li");
  item.dataset.id = conversation.id;
  const open = document.createElement("button");
  open.type = "button";
  open.className = "conversation-link";
  open.textContent = title;
  open.title = title;
  if (conversation.id === state.conversationId) open.setAttribute("aria-current", "page");
  open.addEventListener("click", () => { openConversation(conversation.id); closeSidebar(); });
  const rename = smallButton("rename", `Rename “${title}”`, ICONS.rename);
  rename.addEventListener("click", () => startRename(item, conversation));
  const remove = smallButton("delete", `Delete “${title}”`, ICONS.delete);
  remove.addEventListener("click", () => removeConversation(conversation));
  item.append(open, rename, remove);
  return item;
}

function startRename(item, conversation) {
  const input = document.createElement("input");
  input.type = "text";
  input.className = "rename-input";
  input.value = displayTitle(conversation);
  input.maxLength = 200;
  input.setAttribute("aria-label", `New name for “${displayTitle(conversation)}”`);
  let done = false;
  const finish = (save) => {
    if (done) return;
    done = true;
    if (save) renameLocally(conversation.id, input.value, conversation.title);
    renderSidebar();
    if (conversation.id === state.conversationId) showTitle(displayTitle(conversation));
    $("conversations").querySelector(`li[data-id="${CSS.escape(conversation.id)}"] .conversation-link`)?.focus();
  };
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter") { e.preventDefault(); finish(true); }
    else if (e.key === "Escape") { e.preventDefault(); e.stopPropagation(); finish(false); }
  });
  input.addEventListener("blur", () => finish(true));
  item.replaceChildren(input);
  input.focus();
  input.select();
}

function showTitle(title) {
  $("conversation-title").textContent = title;
  document.title = title === "New chat" ? "Chime" : `${title} — Chime`;
}

function markCurrent() {
  for (const button of document.querySelectorAll(".conversation-link")) {
    const current = button.parentElement.dataset.id === state.conversationId;
    if (current) button.setAttribute("aria-current", "page");
    else button.removeAttribute("aria-current");
  }
}

async function openConversation(id) {
  const token = ++state.loadToken;
  let conversation;
  try {
    conversation = await getConversation(id);
  } catch (err) {
    if (token !== state.loadToken) return;
    rememberConversation(null);
    newChat();
    if (!(err instanceof ApiError && (err.status === 404 || err.status === 401))) showComposerError(err.message);
    return;
  }
  if (token !== state.loadToken) return;
  clearMessages();
  rememberConversation(conversation.id);
  showTitle(displayTitle(conversation));
  showMessages(conversation.messages);
  markCurrent();
  followFromHere();
}

function showMessages(messages) {
  let question = "";
  for (const message of messages) {
    if (message.role === "user") {
      question = message.content;
      addQuestion(message.content);
      continue;
    }
    const view = addAnswer({ channel: message.channel, text: message.content, status: message.status ?? "done", question });
    // A running answer picks its stream up again; a finished one only needs its model's name.
    if (view.running) view.follow(transport());
    else view.loadModel();
  }
  updateComposer();
}

function newChat() {
  state.loadToken++;
  clearMessages();
  rememberConversation(null);
  showTitle("New chat");
  markCurrent();
  showComposerError("");
  $("message").focus();
}

// ---- deleting, with a moment to undo -------------------------------------------

function showToast(text) {
  $("toast-text").textContent = text;
  $("toast").hidden = false;
}

function hideToast() {
  $("toast").hidden = true;
  $("toast-text").textContent = "";
}

function removeConversation(conversation) {
  commitDelete();  // an earlier deletion still waiting goes through now
  const wasCurrent = conversation.id === state.conversationId;
  state.pendingDelete = { conversation, wasCurrent, timer: setTimeout(commitDelete, UNDO_MS) };
  if (wasCurrent) newChat();
  renderSidebar();
  showToast(`Deleted “${displayTitle(conversation)}”.`);
  $("toast-undo").focus();
}

async function commitDelete() {
  const pending = state.pendingDelete;
  if (!pending) return;
  state.pendingDelete = null;
  clearTimeout(pending.timer);
  hideToast();
  const { conversation } = pending;
  try {
    await deleteConversation(conversation.id);
    forgetTitle(conversation.id);
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 404)) {
      showComposerError(`“${displayTitle(conversation)}” could not be deleted: ${err.message}`);
    }
  }
  await refreshSidebar();
}

function undoDelete() {
  const pending = state.pendingDelete;
  if (!pending) return;
  state.pendingDelete = null;
  clearTimeout(pending.timer);
  hideToast();
  renderSidebar();
  if (pending.wasCurrent) openConversation(pending.conversation.id);
  const link = $("conversations").querySelector(`li[data-id="${CSS.escape(pending.conversation.id)}"] .conversation-link`);
  (link ?? $("message")).focus();
}

function setUpDeleting() {
  $("toast-undo").addEventListener("click", undoDelete);
  $("toast-close").addEventListener("click", () => { commitDelete(); $("message").focus(); });
  // Leaving during the undo window: the person asked for the deletion, so it goes through.
  window.addEventListener("pagehide", () => {
    const pending = state.pendingDelete;
    if (!pending) return;
    state.pendingDelete = null;
    fetch(`/api/conversations/${encodeURIComponent(pending.conversation.id)}`,
      { method: "DELETE", credentials: "same-origin", keepalive: true }).catch(() => {});
  });
}

// ---- asking -----------------------------------------------------------------

/** Ask `text` in the conversation on screen. `fromBox`: it was typed (else a follow-up button sent it). */
async function ask(text, { fromBox = true } = {}) {
  showComposerError("");
  const question = addQuestion(text);
  const view = addAnswer({ status: "waiting", question: text });
  if (fromBox) $("message").value = "";
  followFromHere();
  let started;
  try {
    started = await submit(text, state.conversationId);
  } catch (err) {
    // Nothing was sent: nothing of it stays in the transcript, and the question waits in the box.
    view.dispose();
    view.element.remove();
    question.remove();
    state.views = state.views.filter((v) => v !== view);
    $("empty-hint").hidden = state.views.length > 0;
    if (err instanceof ApiError && err.status === 404) rememberConversation(null);
    $("message").value = text;
    updateComposer();
    showComposerError(err instanceof ApiError && err.code === "network"
      ? "Chime can't be reached, so your question wasn't sent. It's still in the box: send it again when the connection is back."
      : `Your question wasn't sent: ${err.message}`);
    return;
  }
  view.setChannel(started.channel);
  view.follow(transport());
  updateComposer();
  const isNew = started.conversation_id !== state.conversationId;
  rememberConversation(started.conversation_id);
  if (isNew) showTitle(text.replace(/\s+/g, " ").trim().slice(0, 80));
  await refreshSidebar();
}

function setUpComposer() {
  const input = $("message");
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = input.value.trim();
    if (text && !$("send").disabled) ask(text);
  });
  input.addEventListener("keydown", (e) => {
    // Enter sends; Shift+Enter is a new line; an IME composing text keeps its Enter.
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("stop").addEventListener("click", async () => {
    try {
      await runningView()?.stop();
    } catch (err) {
      if (!(err instanceof ApiError && err.code === "already_finished")) showComposerError(err.message);
    }
  });
  $("messages").addEventListener("answer-action", (e) => {
    const { action, view } = e.detail;
    if (runningView()) return;
    if (action === "continue") ask("Continue", { fromBox: false });
    else if (action === "regenerate" || action === "retry") ask(view.question, { fromBox: false });
  });
  const startNew = () => { newChat(); closeSidebar(); };
  $("new-chat").addEventListener("click", startNew);
  $("new-chat-top").addEventListener("click", startNew);
}

// ---- the sidebar: search, and a drawer on a narrow screen ----------------------------

function setBehindDrawerInert(inert) {
  for (const element of [document.querySelector(".topbar"), document.querySelector("main")]) element.inert = inert;
}

function openSidebar() {
  document.body.classList.add("sidebar-open");
  $("toggle-sidebar").setAttribute("aria-expanded", "true");
  $("scrim").hidden = false;
  setBehindDrawerInert(true);
  $("new-chat").focus();
}

function closeSidebar({ restoreFocus = false } = {}) {
  if (!document.body.classList.contains("sidebar-open")) return;
  document.body.classList.remove("sidebar-open");
  $("toggle-sidebar").setAttribute("aria-expanded", "false");
  $("scrim").hidden = true;
  setBehindDrawerInert(false);
  if (restoreFocus) $("toggle-sidebar").focus();
}

function setUpSidebar() {
  $("toggle-sidebar").addEventListener("click", () => {
    if (document.body.classList.contains("sidebar-open")) closeSidebar();
    else openSidebar();
  });
  $("close-sidebar").addEventListener("click", () => closeSidebar({ restoreFocus: true }));
  $("scrim").addEventListener("click", () => closeSidebar({ restoreFocus: true }));
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && document.body.classList.contains("sidebar-open")) closeSidebar({ restoreFocus: true });
  });
  narrow.addEventListener("change", () => closeSidebar());
  $("search").addEventListener("input", renderSidebar);
}

// ---- notifications --------------------------------------------------------------

const NOTIFY_LABELS = {
  on: "Notifications on — turn off",
  off: "Notify me when answers finish",
  denied: "Notifications blocked",
  unsupported: "Notifications unavailable",
  install: "Notifications need the Home Screen app",
};

function showNotifyState(current, message = "") {
  const button = $("notify");
  button.textContent = NOTIFY_LABELS[current];
  button.setAttribute("aria-pressed", String(current === "on"));
  button.dataset.state = current;
  button.disabled = current === "install" || current === "unsupported";
  const status = $("notify-status");
  status.textContent = message;
  status.hidden = !message;
}

async function toggleNotifications() {
  const button = $("notify");
  button.disabled = true;
  try {
    if (button.dataset.state === "on") {
      await disablePush();
      showNotifyState("off", "Notifications are off.");
    } else {
      await enablePush();
      showNotifyState("on", "You'll get a notification when an answer finishes while you're away.");
    }
  } catch (err) {
    const current = await pushState();
    let message = err.message;
    if (err instanceof ApiError && err.status === 401) message = "Ask your first question, then turn notifications on.";
    else if (!(err instanceof PushUnavailable)) message = `Notifications could not be turned on: ${err.message}`;
    showNotifyState(current === "on" ? "on" : current, message);
  } finally {
    if (!["install", "unsupported"].includes(button.dataset.state)) button.disabled = false;
  }
}

async function setUpNotifications() {
  const current = await pushState();
  const explained = {
    denied: "Notifications are blocked for this site. Allow them in your browser's site settings to be told when answers finish.",
    unsupported: "This browser can't show notifications from web pages.",
    install: "On iPhone and iPad, Safari sends notifications only to apps on the Home Screen. "
      + "Tap the Share button, choose “Add to Home Screen”, then open Chime from its icon and turn notifications on there.",
  };
  showNotifyState(current, explained[current] ?? "");
  $("notify").addEventListener("click", toggleNotifications);
}

// ---- start ---------------------------------------------------------------------

async function start() {
  setUpSettings();
  setUpComposer();
  setUpSidebar();
  setUpDeleting();
  setUpAutoscroll();
  connectServiceWorker();
  setUpNotifications();
  const wanted = new URLSearchParams(location.search).get("conversation")
    ?? localStorage.getItem(STORAGE.conversation);
  const conversations = await refreshSidebar();
  if (wanted && conversations.some((c) => c.id === wanted)) await openConversation(wanted);
  else rememberConversation(null);
  document.body.dataset.ready = "true";
}

start();
