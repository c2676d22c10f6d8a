// Opting in and out of "Notify me when answers finish": a Web Push
// subscription made with the server's VAPID key and registered with it.
import { addSubscription, removeSubscription, vapidPublicKey } from "./api.js";

export const SERVICE_WORKER_URL = "/sw.js";

/** Why notifications can't be turned on, in words a person can act on. */
export class PushUnavailable extends Error {}

export const pushSupported = () =>
  "serviceWorker" in navigator && "PushManager" in window && "Notification" in window;

/** Register the service worker at root scope; harmless to call on every page load. */
export function registerServiceWorker() {
  if (!("serviceWorker" in navigator)) return Promise.resolve(null);
  return navigator.serviceWorker.register(SERVICE_WORKER_URL, { scope: "/" }).catch(() => null);
}

function keyBytes(base64url) {
  const base64 = base64url.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(base64url.length / 4) * 4, "=");
  return Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
}

async function registration() {
  await registerServiceWorker();
  return navigator.serviceWorker.ready;
}

/**
 * iOS and iPadOS Safari deliver Web Push only to a site added to the Home Screen
 * and opened from there; in a Safari tab the push API is simply missing.
 */
export function needsHomeScreen() {
  const ua = navigator.userAgent;
  const iOS = /iPhone|iPad|iPod/.test(ua) || (/Macintosh/.test(ua) && navigator.maxTouchPoints > 1);
  const standalone = navigator.standalone === true || window.matchMedia("(display-mode: standalone)").matches;
  return iOS && !standalone;
}

/** "install" (iOS outside the Home Screen app), "unsupported", "denied", "on" or "off". */
export async function pushState() {
  if (needsHomeScreen()) return "install";
  if (!pushSupported()) return "unsupported";
  if (Notification.permission === "denied") return "denied";
  if (Notification.permission !== "granted") return "off";
  const reg = await navigator.serviceWorker.getRegistration("/");
  const subscription = await reg?.pushManager.getSubscription();
  return subscription ? "on" : "off";
}

/** Ask for permission, subscribe with the server's key, and register the subscription. */
export async function enablePush() {
  if (!pushSupported()) {
    throw new PushUnavailable("This browser can't show notifications from web pages.");
  }
  const permission = await Notification.requestPermission();
  if (permission !== "granted") {
    throw new PushUnavailable(permission === "denied"
      ? "Notifications are blocked for this site. Allow them in your browser's site settings, then try again."
      : "Notifications need your permission: choose Allow when the browser asks.");
  }
  const { public_key: key } = await vapidPublicKey();
  const reg = await registration();
  let subscription;
  try {
    subscription = await reg.pushManager.getSubscription()
      ?? await reg.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: keyBytes(key) });
  } catch (err) {
    throw new PushUnavailable(`The browser's push service refused to subscribe (${err.message}).`);
  }
  await addSubscription(subscription.toJSON());
}

/** Tell the server to stop pushing here, then drop the browser's subscription. */
export async function disablePush() {
  const reg = await navigator.serviceWorker.getRegistration("/");
  const subscription = await reg?.pushManager.getSubscription();
  if (!subscription) return;
  await removeSubscription(subscription.endpoint);
  await subscription.unsubscribe();
}
