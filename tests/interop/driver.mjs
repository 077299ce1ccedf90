// What every interop script shares: the line protocol with its pytest driver, the login, and the
// record of the HTTP requests a library made for one step.
//
// The test writes one JSON command per line on stdin ({"step": NAME, ...arguments}); the script
// answers each with one JSON line on stdout ({"step", "ok": true, "result", "requests"} or
// {"step", "ok": false, "error", "status", "requests"}), in order. A script may also write lines
// of its own between answers (see emit): they carry no "step" and report what happened outside
// any step, such as a notification pushed by the server.

import { createInterface } from "node:readline";
import { Session } from "@inrupt/solid-client-authn-node";

export const state = { session: null, recorded: [] };

/** A fetch that notes each request and its answer for the step's report. */
export function recordingFetch(inner) {
  return async (input, init = {}) => {
    const url = typeof input === "string" || input instanceof URL ? input : input.url;
    const headers = new Headers(init.headers ?? (typeof input === "object" ? input.headers : undefined));
    const entry = {
      method: (init.method ?? "GET").toUpperCase(),
      url: String(url),
      contentType: headers.get("content-type"),
      accept: headers.get("accept"),
      slug: headers.get("slug"),
      link: headers.get("link"),
      ifNoneMatch: headers.get("if-none-match"),
      ifMatch: headers.get("if-match"),
      authorization: headers.get("authorization")?.split(" ")[0] ?? null,
    };
    if (typeof init.body === "string" && (entry.method === "PATCH" || /json/.test(entry.contentType ?? ""))) {
      entry.body = init.body;
    }
    const response = await inner(input, init);
    entry.status = response.status;
    entry.location = response.headers.get("location");
    entry.responseContentType = response.headers.get("content-type");
    if (/json/.test(entry.responseContentType ?? "")) {
      entry.responseBody = await response.clone().text();
    }
    state.recorded.push(entry);
    return response;
  };
}

/** The logged-in session's fetch, recorded. */
export function authFetch() {
  if (state.session === null) throw new Error("not logged in: send the login step first");
  return recordingFetch(state.session.fetch);
}

/** The client credentials grant: every later request of the session carries a DPoP-bound access
 * token and a fresh DPoP proof, as an app's requests do. */
export async function login({ issuer, clientId, clientSecret }) {
  state.session = new Session();
  await state.session.login({ oidcIssuer: issuer, clientId, clientSecret, tokenType: "DPoP" });
  return { isLoggedIn: state.session.info.isLoggedIn, webId: state.session.info.webId ?? null };
}

/** One line on stdout outside any step's answer. */
export function emit(line) {
  process.stdout.write(JSON.stringify(line) + "\n");
}

async function run(steps, command) {
  const handler = steps[command.step];
  if (handler === undefined) return { step: command.step, ok: false, error: `no step ${command.step}` };
  state.recorded = [];
  try {
    const result = await handler(command);
    return { step: command.step, ok: true, result, requests: state.recorded };
  } catch (error) {
    return {
      step: command.step,
      ok: false,
      error: String(error?.message ?? error),
      errorName: error?.constructor?.name ?? null,
      status: error?.statusCode ?? error?.response?.status ?? null,
      requests: state.recorded,
    };
  }
}

/** Answer the commands on stdin with ``steps`` (plus "login") until stdin closes. */
export async function serve(steps) {
  const all = { login, ...steps };
  const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
  for await (const line of lines) {
    if (!line.trim()) continue;
    emit(await run(all, JSON.parse(line)));
  }
  if (state.session !== null) await state.session.logout({ logoutType: "app" }).catch(() => {});
}
