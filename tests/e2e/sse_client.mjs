// The `eventsource` package (a spec-following EventSource for Node) reading one channel to its end.
// Prints one JSON line: every dispatched event, by listener, so the test can see phantoms.
import { EventSource } from "eventsource";

const [url, token] = process.argv.slice(2);
const seen = [];
const source = new EventSource(url, {
  fetch: (input, init) => fetch(input, { ...init, headers: { ...init.headers, Authorization: `Bearer ${token}` } }),
});
const finish = () => {
  source.close();
  console.log(JSON.stringify(seen));
  process.exit(0);
};
source.onmessage = (e) => seen.push({ listener: "message", id: e.lastEventId, data: e.data });
for (const type of ["meta", "delta", "usage", "done", "error", "cancelled", "interrupted"]) {
  source.addEventListener(type, (e) => {
    if (e.data === undefined) return; // the connection's own error, not a server-sent event
    seen.push({ listener: type, id: e.lastEventId, data: e.data });
    if (["done", "error", "cancelled", "interrupted"].includes(type)) finish();
  });
}
setTimeout(() => { console.log(JSON.stringify({ timeout: seen })); process.exit(1); }, 30000);
