// The AI SDK's own chat transport (npm `ai`, pinned in package.json) against a running Chime.
//
// Driven by tests/ai_sdk/test_client.py: `node client.mjs <scenario>` with CHIME_URL, CHIME_TOKEN
// and CHAT_ID in the environment. Progress lines go to stdout as they happen ("parts <n>");
// the result is the last line, `result <json>`. Scenarios that wait for the test read
// one line from stdin ("go") at the point where the test acts on the server.
import { DefaultChatTransport, readUIMessageStream } from "ai";
import { createInterface } from "node:readline";

const base = process.env.CHIME_URL;
const chatId = process.env.CHAT_ID;
const question = process.env.QUESTION ?? "Tell me about durable streams.";
const history = JSON.parse(process.env.HISTORY ?? "[]");
const partsBeforeAct = Number(process.env.PARTS_BEFORE_ACT ?? "6");
const api = `${base}/api/ai/chat`;
const authorization = { Authorization: `Bearer ${process.env.CHIME_TOKEN}` };
const transport = new DefaultChatTransport({ api, headers: authorization });
const stdin = createInterface({ input: process.stdin });
const lines = stdin[Symbol.asyncIterator]();

function userMessage(text, id) {
  return { id, role: "user", parts: [{ type: "text", text }] };
}

function send(trigger = "submit-message") {
  const messages = [...history, userMessage(question, `q-${history.length}`)];
  return transport.sendMessages({ chatId, messages, trigger, messageId: undefined, abortSignal: undefined });
}

// Every chunk of a stream, in order; a stream that breaks ends the list with {broken: message}.
async function collect(stream, { onChunk = () => {} } = {}) {
  const chunks = [];
  const reader = stream.getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return chunks;
      chunks.push(value);
      await onChunk(chunks);
    }
  } catch (error) {
    chunks.push({ broken: String(error?.message ?? error) });
    return chunks;
  }
}

// The assistant message the SDK builds from the chunks (what useChat would show).
async function messageOf(chunks) {
  const stream = new ReadableStream({
    start(controller) {
      for (const chunk of chunks) if (!chunk.broken && chunk.type !== "error") controller.enqueue(chunk);
      controller.close();
    },
  });
  let last;
  for await (const message of readUIMessageStream({ stream })) last = message;
  return last;
}

function textOf(chunks) {
  return chunks.filter((c) => c.type === "text-delta").map((c) => c.delta).join("");
}

async function waitForTest() {
  console.log(`act`);
  const { value } = await lines.next();
  if (value !== "go") throw new Error(`expected "go" from the test, got ${value}`);
}

// Reads the stream until `count` text deltas have arrived, then lets the test act; reads on.
function pauseAfterDeltas(count, act) {
  let acted = false;
  return async (chunks) => {
    if (!acted && chunks.filter((c) => c.type === "text-delta").length >= count) {
      acted = true;
      await act(chunks);
    }
  };
}

const scenarios = {
  // One question, read to its end, and the message the SDK makes of it.
  async send() {
    const chunks = await collect(await send(process.env.TRIGGER ?? "submit-message"));
    return { chunks, message: await messageOf(chunks) };
  },

  // A reconnect while the answer runs replays it from `start` and follows it live to its end.
  async reconnect() {
    let resumed;
    const first = await collect(await send(), {
      onChunk: pauseAfterDeltas(partsBeforeAct, async () => {
        resumed = collect(await transport.reconnectToStream({ chatId }));
      }),
    });
    const again = await resumed;
    return { first, again, firstText: textOf(first), againText: textOf(again),
             againMessage: await messageOf(again) };
  },

  // Nothing running: the transport's reconnect gives null (Chime answers 204).
  async idle() {
    const stream = await transport.reconnectToStream({ chatId });
    return { stream: stream === null ? null : "a stream" };
  },

  // Stop while the answer runs: the stream ends with `abort`, and no `finish`.
  async stop() {
    let status;
    const chunks = await collect(await send(), {
      onChunk: pauseAfterDeltas(partsBeforeAct, async () => {
        const response = await fetch(`${api}/${encodeURIComponent(chatId)}/stop`,
                                     { method: "POST", headers: authorization });
        status = response.status;
      }),
    });
    const after = await fetch(`${api}/${encodeURIComponent(chatId)}/stop`, { method: "POST", headers: authorization });
    return { chunks, status, statusAfter: after.status, message: await messageOf(chunks) };
  },

  // The server is killed mid-answer and started again (by the test, at "act"); the client
  // resumes after the last part it saw (its index is the count of parts so far, less one).
  async crash() {
    const before = await collect(await send(), {
      onChunk: pauseAfterDeltas(partsBeforeAct, async () => console.log("killable")),
    });
    const seen = before.filter((c) => !c.broken);
    await waitForTest();
    const stream = await transport.reconnectToStream({
      chatId, headers: { "Last-Event-ID": String(seen.length - 1) },
    });
    const after = stream === null ? null : await collect(stream);
    return { before, after, text: textOf(seen) + textOf(after ?? []),
             message: after && await messageOf([...seen, ...after]) };
  },
};

const scenario = scenarios[process.argv[2]];
if (!scenario) throw new Error(`unknown scenario ${process.argv[2]}`);
const result = await scenario();
console.log(`result ${JSON.stringify(result)}`);
stdin.close();
