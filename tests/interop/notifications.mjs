// Live updates with @inrupt/solid-client-notifications, driven by
// tests/test_interop_notifications.py through the line protocol of driver.mjs.
//
// "subscribe" opens a WebsocketNotification on a topic the way an app does, with the library's own
// discovery (the storage description, its notification gateway, the connection endpoint), either
// through the logged-in session's fetch (DPoP) or anonymously. From then on every message the
// library delivers is written as a line {"notification": NAME, "message": ...}, and its "closed"
// and "error" events as {"closed": NAME} and {"error": NAME, "message"}; the test waits for them.
//
// Every HTTP request the library makes, through the session or not, goes through the global fetch,
// which records it (and its JSON answer) for the step's report.

import { WebsocketNotification } from "@inrupt/solid-client-notifications";
import { emit, recordingFetch, serve, state } from "./driver.mjs";

const CONNECT_TIMEOUT = 10_000;
globalThis.fetch = recordingFetch(globalThis.fetch.bind(globalThis));

const sockets = new Map();

/** Connects ``socket``; resolves on its "connected" event, rejects when the library's connect
 * throws (discovery or subscription refused) or on "error" or "closed" before "connected". */
async function connected(socket) {
  let timer;
  const opened = new Promise((resolve, reject) => {
    timer = setTimeout(() => reject(new Error("no connected event in time")), CONNECT_TIMEOUT);
    socket.once("connected", resolve);
    socket.once("error", (event) => reject(new Error(`socket error: ${event?.message ?? event}`)));
    socket.once("closed", () => reject(new Error("socket closed before it opened")));
  });
  try {
    await socket.connect();
    await opened;
  } finally {
    clearTimeout(timer);
  }
}

const steps = {
  async subscribe({ name, topic, anonymous = false }) {
    if (!anonymous && state.session === null) throw new Error("not logged in");
    const fetch = anonymous ? globalThis.fetch : state.session.fetch;
    const socket = new WebsocketNotification(topic, { fetch });
    socket.on("message", (message) => emit({ notification: name, message }));
    socket.on("closed", () => emit({ closed: name }));
    socket.on("error", (event) => emit({ error: name, message: String(event?.message ?? event) }));
    await connected(socket);
    sockets.set(name, socket);
    return { status: socket.status, gateway: socket.gateway ?? null };
  },

  async disconnect({ name }) {
    const socket = sockets.get(name);
    if (socket === undefined) throw new Error(`no socket ${name}`);
    const closed = new Promise((resolve) => socket.once("closed", resolve));
    socket.disconnect();
    await closed;
    sockets.delete(name);
    return { status: socket.status };
  },
};

await serve(steps);
for (const socket of sockets.values()) socket.disconnect();
