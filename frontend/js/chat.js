// The chat page: conversations in a sidebar, the current conversation's
// messages, a composer, and the answer of the moment streaming in.
import { ApiError, deleteConversation, getConversation, listConversations, submit } from "./api.js";
import { AnswerView, questionElement } from "./answer-view.js";
import { PushUnavailable, disablePush, enablePush, pushState } from "./push.js";
import { TRANSPORTS } from "./stream.js";
import { connectServiceWorker } from "./worker-bridge.js";

const STORAGE = { transport: "chime.transport", conversation: "chime.conversation" };
const $ = (id) => document.getElementById(id);

const state = {
  conversationId: null,
  views: [],          // AnswerViews of the conversation on screen
  loadToken: 0,       // the latest openConversation() call; older ones stop quietly
};

// ---- preferences ----------------------------------------------------------

const transport = () => localStorage.getItem(STORAGE.transport) ?? "sse";

function setUpTransportChoice() {
  const select = $("transport");
  for (const [value, label] of Object.entries(TRANSPORTS)) select.append(new Option(label, value));
  select.value = transport();
  select.addEventListener("change", () => localStorage.setItem(STORAGE.transport, select.value));
}

function rememberConversation(id) {
  state.conversationId = id;
  if (id) localStorage.setItem(STORAGE.conversation, id);
  else localStorage.removeItem(STORAGE.conversation);
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
  $("messages").append(questionElement(text));
}

function addAnswer(options) {
  const view = new AnswerView({ ...options, onChange: updateComposer });
  state.views.push(view);
  $("messages").append(view.element);
  return view;
}

const runningView = () => state.views.find((view) => view.running && view.channel);

/** Send is for a new question; Stop appears while an answer of this conversation runs. */
function updateComposer() {
  const running = runningView();
  $("stop").hidden = !running;
  $("send").disabled = Boolean(running);
  const last = state.views.at(-1);
  if (last?.running) last.element.scrollIntoView({ block: "end" });
}

function showComposerError(message) {
  $("composer-error").textContent = message;
  $("composer-error").hidden = !message;
}

// ---- conversations ------------------------------------------------------------

async function refreshSidebar() {
  let conversations = [];
  try {
    conversations = (await listConversations()).conversations;
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 401)) showComposerError(err.message);
  }
  const list = $("conversations");
  list.replaceChildren(...conversations.map(conversationItem));
  $("no-conversations").hidden = conversations.length > 0;
  return conversations;
}

function conversationItem(conversation) {
  const item = document.createElement("li");
  item.dataset.id = conversation.id;
  const open = document.createElement("button");
  open.type = "button";
  open.className = "conversation-link";
  open.textContent = conversation.title;
  open.title = conversation.title;
  if (conversation.id === state.conversationId) open.setAttribute("aria-current", "true");
  open.addEventListener("click", () => { openConversation(conversation.id); closeSidebar(); });
  const remove = document.createElement("button");
  remove.type = "button";
  remove.className = "icon-button delete";
  remove.setAttribute("aria-label", `Delete “${conversation.title}”`);
  remove.textContent = "✕";
  remove.addEventListener("click", () => removeConversation(conversation));
  item.append(open, remove);
  return item;
}

function markCurrent() {
  for (const button of document.querySelectorAll(".conversation-link")) {
    const current = button.parentElement.dataset.id === state.conversationId;
    if (current) button.setAttribute("aria-current", "true");
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
  $("conversation-title").textContent = conversation.title;
  document.title = `${conversation.title} — Chime`;
  showMessages(conversation.messages);
  markCurrent();
}

function showMessages(messages) {
  for (const message of messages) {
    if (message.role === "user") {
      addQuestion(message.content);
      continue;
    }
    const view = addAnswer({ channel: message.channel, text: message.content, status: message.status ?? "done" });
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
  $("conversation-title").textContent = "New chat";
  document.title = "Chime";
  markCurrent();
  showComposerError("");
  $("message").focus();
}

async function removeConversation(conversation) {
  if (!confirm(`Delete “${conversation.title}” and its answers?`)) return;
  try {
    await deleteConversation(conversation.id);
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 404)) return showComposerError(err.message);
  }
  if (conversation.id === state.conversationId) newChat();
  await refreshSidebar();
}

// ---- asking -----------------------------------------------------------------

async function ask(text) {
  showComposerError("");
  addQuestion(text);
  const view = addAnswer({ status: "waiting" });
  $("message").value = "";
  let started;
  try {
    started = await submit(text, state.conversationId);
  } catch (err) {
    view.fail(err.message);
    if (err instanceof ApiError && err.status === 404) rememberConversation(null);
    $("message").value = text;  // nothing was sent: give the question back
    return;
  }
  view.setChannel(started.channel);
  view.follow(transport());
  const isNew = started.conversation_id !== state.conversationId;
  rememberConversation(started.conversation_id);
  if (isNew) $("conversation-title").textContent = text.split("\n")[0].slice(0, 80);
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
  $("new-chat").addEventListener("click", () => { newChat(); closeSidebar(); });
}

// ---- the sidebar on a narrow screen ----------------------------------------------

function closeSidebar() {
  document.body.classList.remove("sidebar-open");
  $("toggle-sidebar").setAttribute("aria-expanded", "false");
}

function setUpSidebarToggle() {
  $("toggle-sidebar").addEventListener("click", () => {
    const open = document.body.classList.toggle("sidebar-open");
    $("toggle-sidebar").setAttribute("aria-expanded", String(open));
    if (open) $("new-chat").focus();
  });
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && document.body.classList.contains("sidebar-open")) {
      closeSidebar();
      $("toggle-sidebar").focus();
    }
  });
}

// ---- notifications --------------------------------------------------------------

const NOTIFY_LABELS = {
  on: "Notifications on — turn off",
  off: "Notify me when answers finish",
  denied: "Notifications blocked",
  unsupported: "Notifications unavailable",
};

function showNotifyState(current, message = "") {
  const button = $("notify");
  button.textContent = NOTIFY_LABELS[current];
  button.setAttribute("aria-pressed", String(current === "on"));
  button.dataset.state = current;
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
    button.disabled = false;
  }
}

async function setUpNotifications() {
  const current = await pushState();
  const explained = {
    denied: "Notifications are blocked for this site. Allow them in your browser's site settings to be told when answers finish.",
    unsupported: "This browser can't show notifications from web pages.",
  };
  showNotifyState(current, explained[current] ?? "");
  $("notify").addEventListener("click", toggleNotifications);
}

// ---- start ---------------------------------------------------------------------

async function start() {
  setUpTransportChoice();
  setUpComposer();
  setUpSidebarToggle();
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
