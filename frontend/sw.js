// Chime's service worker, served at /sw.js with root scope. It turns a push
// from the server ({"title", "body", "url", "channel", "status"}) into a
// notification, and a click on it into the answer's page.

const SHOWS_CHANNEL = "chime:shows-channel";   // the question pages answer (js/worker-bridge.js)
const ASK_PAGE_TIMEOUT_MS = 500;               // a page that doesn't answer this fast is not watching
const FALLBACK = { title: "Chime", body: "An answer is ready.", url: "/" };

self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

/** Only same-origin paths are opened: a push can never send a click elsewhere. */
function answerUrl(payload) {
  if (typeof payload.channel === "string" && payload.channel) {
    return `/c/${encodeURIComponent(payload.channel)}`;
  }
  const url = new URL(typeof payload.url === "string" ? payload.url : "/", self.location.origin);
  return url.origin === self.location.origin ? url.pathname + url.search : "/";
}

function readPayload(event) {
  try {
    const payload = event.data?.json();
    return payload && typeof payload === "object" ? payload : FALLBACK;
  } catch {
    return { ...FALLBACK, body: event.data?.text() || FALLBACK.body };
  }
}

/** Ask one page whether it shows `channel`; silence counts as no. */
function pageShows(client, channel) {
  return new Promise((resolve) => {
    const reply = new MessageChannel();
    const timer = setTimeout(() => resolve(false), ASK_PAGE_TIMEOUT_MS);
    reply.port1.onmessage = (e) => { clearTimeout(timer); resolve(Boolean(e.data?.shows)); };
    client.postMessage({ type: SHOWS_CHANNEL, channel }, [reply.port2]);
  });
}

const windows = () => self.clients.matchAll({ type: "window", includeUncontrolled: true });
const samePath = (client, path) => new URL(client.url).pathname === path;

/** A window that shows this answer: its own page, or a chat page that says it shows it. */
async function windowShowing(channel, path, { focusedOnly }) {
  const candidates = (await windows()).filter((c) => !focusedOnly || c.focused);
  const direct = candidates.find((c) => samePath(c, path));
  if (direct) return direct;
  for (const client of candidates) {
    if (channel && await pageShows(client, channel)) return client;
  }
  return null;
}

async function showPush(event) {
  const payload = readPayload(event);
  const url = answerUrl(payload);
  const channel = typeof payload.channel === "string" ? payload.channel : null;
  if (channel && await windowShowing(channel, url, { focusedOnly: true })) return;  // already in front of the reader
  await self.registration.showNotification(String(payload.title || FALLBACK.title), {
    body: String(payload.body ?? FALLBACK.body),
    tag: channel ? `chime-${channel}` : "chime",   // one notification per answer, replaced if pushed again
    data: { url, channel, status: payload.status ?? null },
  });
}

async function openAnswer(notification) {
  const { url = "/", channel = null } = notification.data ?? {};
  const existing = await windowShowing(channel, url, { focusedOnly: false });
  if (existing) return existing.focus().catch(() => existing);
  try {
    return await self.clients.openWindow(url);
  } catch {
    // The browser refused a new window (it didn't count this as the user's
    // click): show the answer in a Chime tab that is already open instead.
    const [tab] = await windows();
    return tab ? tab.navigate(url) : null;
  }
}

// Pushes are handled one after another, so notifications appear in the order
// the answers ended and each decision sees the previous one done.
let pushQueue = Promise.resolve();
function enqueuePush(event) {
  pushQueue = pushQueue.then(() => showPush(event)).catch((err) => console.error("Chime push:", err));
  return pushQueue;
}

/** Keep the worker alive for `promise` when the browser dispatched the event. */
function extend(event, promise) {
  try {
    event.waitUntil(promise);
  } catch {
    // An event dispatched from script (tests) can't be extended; the promise still runs.
  }
  return promise;
}

self.addEventListener("push", (event) => { extend(event, enqueuePush(event)); });

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  extend(event, openAnswer(event.notification));
});
