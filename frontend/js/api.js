// The HTTP API (see API.md) as small functions. Identity is the HttpOnly
// `chime_token` cookie the server sets on the first POST /api/chat, so every
// request here is same-origin with credentials.

/** An API error: `status` is the HTTP status, `code` the API's error slug. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function request(method, path, body) {
  const init = { method, credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, "network", "The server can't be reached. Check the connection and try again.");
  }
  if (response.status === 204) return null;
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const error = data?.error ?? {};
    throw new ApiError(response.status, error.code ?? "http_" + response.status,
      error.message ?? `The server answered ${response.status}.`);
  }
  return data;
}

export const submit = (message, conversationId) =>
  request("POST", "/api/chat", conversationId ? { message, conversation_id: conversationId } : { message });
export const listConversations = () => request("GET", "/api/conversations");
export const getConversation = (id) => request("GET", `/api/conversations/${encodeURIComponent(id)}`);
export const deleteConversation = (id) => request("DELETE", `/api/conversations/${encodeURIComponent(id)}`);
export const getChannel = (id) => request("GET", `/api/channels/${encodeURIComponent(id)}`);
export const cancelChannel = (id) => request("POST", `/api/channels/${encodeURIComponent(id)}/cancel`);
export const vapidPublicKey = () => request("GET", "/api/push/vapid-public-key");
export const addSubscription = (subscription) => request("POST", "/api/push/subscriptions", subscription);
export const removeSubscription = (endpoint) => request("DELETE", "/api/push/subscriptions", { endpoint });

export const presenceUrl = (channel) => `/api/channels/${encodeURIComponent(channel)}/presence`;

/** Report the page's visibility for an SSE reader; `beacon` for pagehide, when fetch may not finish. */
export function reportPresence(channel, visible, { beacon = false } = {}) {
  const body = JSON.stringify({ visible });
  if (beacon && navigator.sendBeacon) {
    // A string body goes out as text/plain, which the server accepts (API.md).
    navigator.sendBeacon(presenceUrl(channel), body);
    return;
  }
  fetch(presenceUrl(channel), {
    method: "POST", credentials: "same-origin", keepalive: true,
    headers: { "Content-Type": "application/json" }, body,
  }).catch(() => {});  // best effort: the worst case is one extra notification
}
