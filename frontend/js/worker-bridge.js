// The page's side of the service worker: register it, and answer its question
// "do you show this answer right now?" so it can skip a needless notification.
import { showsChannel } from "./answer-view.js";
import { registerServiceWorker } from "./push.js";

export const SHOWS_CHANNEL = "chime:shows-channel";

export function connectServiceWorker() {
  if (!("serviceWorker" in navigator)) return;
  navigator.serviceWorker.addEventListener("message", (e) => {
    if (e.data?.type === SHOWS_CHANNEL && e.ports[0]) {
      e.ports[0].postMessage({ shows: showsChannel(e.data.channel) });
    }
  });
  navigator.serviceWorker.startMessages();
  registerServiceWorker();
}
