// What the sidebar shows about conversations, without the DOM: names a person
// gave them in this browser, and the date groups they fall into.

const TITLES_KEY = "chime.titles";

// There is no rename in the API: a new name lives in this browser only, keyed by
// the conversation's id, and the server's title stays what it was.
function readTitles() {
  try {
    const titles = JSON.parse(localStorage.getItem(TITLES_KEY) ?? "{}");
    return titles && typeof titles === "object" ? titles : {};
  } catch {
    return {};
  }
}

export function displayTitle(conversation) {
  const given = readTitles()[conversation.id];
  return typeof given === "string" && given.trim() ? given : conversation.title;
}

/** Name `id` `title` in this browser; an empty name (or the server's own) goes back to the server's. */
export function renameLocally(id, title, serverTitle) {
  const titles = readTitles();
  const name = title.replace(/\s+/g, " ").trim().slice(0, 200);
  if (!name || name === serverTitle) delete titles[id];
  else titles[id] = name;
  localStorage.setItem(TITLES_KEY, JSON.stringify(titles));
}

export function forgetTitle(id) {
  const titles = readTitles();
  if (!(id in titles)) return;
  delete titles[id];
  localStorage.setItem(TITLES_KEY, JSON.stringify(titles));
}

export const GROUPS = ["Today", "Yesterday", "Previous 7 days", "Older"];

const DAY_MS = 24 * 60 * 60 * 1000;

/** Today, Yesterday, Previous 7 days or Older, by the conversation's last update in local time. */
export function groupOf(updatedAt, now = new Date()) {
  const when = new Date(updatedAt);
  if (Number.isNaN(when.getTime())) return "Older";
  const midnight = new Date(now.getFullYear(), now.getMonth(), now.getDate()).getTime();
  const time = when.getTime();
  if (time >= midnight) return "Today";
  if (time >= midnight - DAY_MS) return "Yesterday";
  if (time >= midnight - 7 * DAY_MS) return "Previous 7 days";
  return "Older";
}

/** [[group, conversations]…] in the order of GROUPS, empty groups left out; order within a group kept. */
export function groupByDate(conversations, now = new Date()) {
  const groups = new Map(GROUPS.map((name) => [name, []]));
  for (const conversation of conversations) groups.get(groupOf(conversation.updated_at, now)).push(conversation);
  return [...groups].filter(([, items]) => items.length > 0);
}
