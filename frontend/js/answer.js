// The answer page (/c/<channel>), the page a notification opens: the question
// and its whole answer, still streaming when the answer still runs.
import { ApiError, getChannel, getConversation } from "./api.js";
import { AnswerView, questionElement } from "./answer-view.js";
import { connectServiceWorker } from "./worker-bridge.js";

const TRANSPORT_KEY = "chime.transport";
const $ = (id) => document.getElementById(id);

const channelFromPath = () => decodeURIComponent(location.pathname.split("/").filter(Boolean).at(-1) ?? "");

/** The question this channel answers: the user message just before it. */
function questionFor(messages, channel) {
  const index = messages.findIndex((m) => m.channel === channel && m.role === "assistant");
  for (let i = index - 1; i >= 0; i--) if (messages[i].role === "user") return messages[i].content;
  return messages.find((m) => m.channel === channel && m.role === "user")?.content ?? "";
}

function showError(err) {
  const gone = err instanceof ApiError && (err.status === 404 || err.status === 401);
  $("answer-error").textContent = gone
    ? "This answer isn't here: it was deleted, or it belongs to another browser."
    : err.message;
  $("answer-error").hidden = false;
}

async function start() {
  connectServiceWorker();
  const channel = channelFromPath();
  try {
    const record = await getChannel(channel);
    const conversation = await getConversation(record.conversation_id);
    $("open-conversation").href = `/?conversation=${encodeURIComponent(conversation.id)}`;
    document.title = `${conversation.title} — Chime`;
    $("answer").append(questionElement(questionFor(conversation.messages, channel)));
    const view = new AnswerView({ channel, text: record.content, status: record.status, model: record.model });
    $("answer").append(view.element);
    if (view.running) view.follow(localStorage.getItem(TRANSPORT_KEY) ?? "sse");
  } catch (err) {
    showError(err);
  }
  document.body.dataset.ready = "true";
}

start();
