// Following one channel (one answer) over EventSource or WebSocket, with exact
// resume: every event carries an id 1, 2, 3 …; after any drop we reconnect
// from the last id seen, and an id we already have is never applied twice.
import { cancelChannel, reportPresence } from "./api.js";

export const TRANSPORTS = { sse: "EventSource", ws: "WebSocket" };
export const TERMINAL = new Set(["done", "error", "cancelled", "interrupted"]);
const EVENT_TYPES = ["meta", "delta", "usage", "done", "cancelled", "interrupted"];

const RETRY_FIRST_MS = 250;   // first reconnect attempt after a drop we handle ourselves
const RETRY_MAX_MS = 5_000;   // backoff ceiling, so a long outage still recovers quickly
const WS_CLOSE_FINISHED = 1000;

const active = new Set();     // followers that are attached, for visibility reports

const pageVisible = () => document.visibilityState === "visible";

/**
 * Follows `channel` from `lastEventId` (0: from the start) until its terminal event.
 *
 * `onEvent(type, data, id)` sees each event exactly once and in order.
 * `onState(state)` sees "connecting", "live", "reconnecting", "ended" or
 * "lost" (the channel is gone or not ours; nothing more will come).
 */
export class Follower {
  constructor(channel, { transport = "sse", lastEventId = 0, onEvent, onState }) {
    this.channel = channel;
    this.transport = transport in TRANSPORTS ? transport : "sse";
    this.lastEventId = lastEventId;
    this.onEvent = onEvent;
    this.onState = onState ?? (() => {});
    this.closed = false;
    this.attempt = 0;
    this.source = null;
    this.socket = null;
    this.timer = null;
    this.reconnectNow = () => { if (this.timer) this.retryNow(); };
  }

  start() {
    active.add(this);
    window.addEventListener("online", this.reconnectNow);
    this.onState("connecting");
    this.connect();
    return this;
  }

  connect() {
    this.timer = null;
    if (this.closed) return;
    if (this.transport === "ws") this.openSocket();
    else this.openEventSource();
  }

  /** Apply one event; ids at or below the last one seen are repeats and are dropped. */
  receive(id, type, data) {
    if (!Number.isInteger(id) || id <= this.lastEventId) return;
    this.lastEventId = id;
    this.attempt = 0;
    this.onEvent(type, data, id);
    if (TERMINAL.has(type)) {
      this.close();
      this.onState("ended");
    }
  }

  // ---- EventSource: reconnects by itself and sends Last-Event-ID ----------

  openEventSource() {
    const query = this.lastEventId ? `?last_event_id=${this.lastEventId}` : "";
    const source = new EventSource(`/api/channels/${encodeURIComponent(this.channel)}/events${query}`);
    this.source = source;
    source.addEventListener("open", () => {
      this.onState("live");
      // A beacon from an earlier page (pagehide) may have left the channel marked unseen.
      if (pageVisible()) reportPresence(this.channel, true);
    });
    for (const type of EVENT_TYPES) {
      source.addEventListener(type, (e) => this.receive(Number(e.lastEventId), type, JSON.parse(e.data)));
    }
    source.addEventListener("error", (e) => {
      // A server-sent `error` event and a connection error share this listener (API.md).
      if (e instanceof MessageEvent && e.data) {
        this.receive(Number(e.lastEventId), "error", JSON.parse(e.data));
        return;
      }
      if (this.closed) return;
      if (source.readyState === EventSource.CLOSED) {
        // The browser gave up (an HTTP error, or a 204); we keep trying, with backoff.
        source.close();
        this.source = null;
        this.retryLater();
      } else {
        this.onState("reconnecting");
      }
    });
  }

  // ---- WebSocket: we reconnect ourselves --------------------------------

  openSocket() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const path = `/api/channels/${encodeURIComponent(this.channel)}/ws?last_event_id=${this.lastEventId}`;
    const socket = new WebSocket(`${scheme}//${location.host}${path}`);
    this.socket = socket;
    socket.addEventListener("open", () => {
      this.onState("live");
      this.sendFrame({ type: "presence", visible: pageVisible() });
    });
    socket.addEventListener("message", (e) => {
      let frame;
      try { frame = JSON.parse(e.data); } catch { return; }
      this.receive(frame.id, frame.event, frame.data);
    });
    socket.addEventListener("close", (e) => {
      if (this.socket === socket) this.socket = null;
      if (this.closed) return;
      if (e.code >= 4400 && e.code < 4500) {
        this.close();
        this.onState("lost", e.reason);
      } else if (e.code === WS_CLOSE_FINISHED && e.reason === "finished") {
        // Nothing after our last id: we already had the end (defensive; receive() closes first).
        this.close();
        this.onState("ended");
      } else {
        this.retryLater();
      }
    });
  }

  sendFrame(frame) {
    if (this.socket?.readyState === WebSocket.OPEN) {
      this.socket.send(JSON.stringify(frame));
      return true;
    }
    return false;
  }

  // ---- reconnecting, visibility, cancelling, closing ----------------------

  retryLater() {
    this.onState("reconnecting");
    const delay = Math.min(RETRY_MAX_MS, RETRY_FIRST_MS * 2 ** this.attempt);
    this.attempt += 1;
    // Jitter spreads the reconnects of many tabs after a server restart.
    this.timer = setTimeout(() => this.connect(), delay * (0.75 + Math.random() / 2));
  }

  retryNow() {
    clearTimeout(this.timer);
    this.connect();
  }

  reportVisibility(visible, { beacon = false } = {}) {
    if (this.transport === "ws" && !beacon && this.sendFrame({ type: "presence", visible })) return;
    reportPresence(this.channel, visible, { beacon });
  }

  /** Ask the server to stop the answer; the stream then ends with `cancelled`. */
  async cancel() {
    if (this.sendFrame({ type: "cancel" })) return;
    await cancelChannel(this.channel);
  }

  close() {
    this.closed = true;
    active.delete(this);
    window.removeEventListener("online", this.reconnectNow);
    clearTimeout(this.timer);
    this.source?.close();
    this.source = null;
    if (this.socket) {
      const socket = this.socket;
      this.socket = null;
      if (socket.readyState <= WebSocket.OPEN) socket.close(1000);
    }
  }
}

document.addEventListener("visibilitychange", () => {
  for (const follower of active) follower.reportVisibility(pageVisible());
});

// The page is going away (closed, navigated, or frozen on a phone): a beacon
// is the one request that reliably leaves now.
window.addEventListener("pagehide", () => {
  for (const follower of active) follower.reportVisibility(false, { beacon: true });
});
