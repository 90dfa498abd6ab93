// The HTTP API as the console calls it: the key lives only in this tab's sessionStorage and
// goes out as `Authorization: Bearer <key>` on same-origin requests, never anywhere else.

import { pause, readFrames } from "./sse.js";

const KEY = "rayfleet.apiKey";
export const TERMINAL = new Set(["run.completed", "run.failed", "run.cancelled"]);

export function getKey() { return sessionStorage.getItem(KEY); }
export function setKey(key) { sessionStorage.setItem(KEY, key); }
export function forgetKey() { sessionStorage.removeItem(KEY); }

/**
 * The URL of an API path ("/v1/...") for this page: the console is served at `<prefix>/console`,
 * so an app mounted under a route prefix is called under that prefix too.
 */
export function api(path) {
  return `${location.pathname.replace(/\/console\/?$/, "")}${path}`;
}

/** The request headers with the key, if one is set. */
export function headers(extra = {}) {
  const key = getKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : { ...extra };
}

/** One JSON call: {status, ok, data} (data: the JSON body, or null). */
export async function call(method, path, body) {
  const init = { method, headers: headers({ Accept: "application/json" }) };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(api(path), init);
  let data = null;
  try { data = await response.json(); } catch { data = null; }
  return { status: response.status, ok: response.ok, data };
}

/** A problem+json body as one line a person can read. */
export function problemText(result) {
  const data = result.data || {};
  return `${result.status} ${data.title || ""}: ${data.detail || "request failed"}`;
}

/**
 * A run's events, live: SSE read through fetch (EventSource cannot send a header), parsed
 * as it arrives. A stream cut before the terminal event resumes after the last seq seen,
 * a bounded number of times. Calls onEvent(event) for each event, in order.
 */
export async function streamEvents(runId, onEvent, signal) {
  let after = 0;
  for (let attempt = 0; attempt < 20; attempt++) {
    const url = api(`/v1/runs/${encodeURIComponent(runId)}/events?after=${after}`);
    let response;
    try {
      response = await fetch(url, { headers: headers({ Accept: "text/event-stream" }), signal });
    } catch (error) {
      if (signal && signal.aborted) return { ended: false };
      await pause(500, signal);
      continue;
    }
    if (!response.ok) return { ended: false, status: response.status };
    const ended = await readFrames(response.body, (frame) => {
      const event = JSON.parse(frame.data);
      if (event.seq <= after) return false;  // a replayed frame: shown once only
      after = event.seq;
      onEvent(event);
      return TERMINAL.has(event.kind);
    });
    if (ended) return { ended: true };
    if (signal && signal.aborted) return { ended: false };
    await pause(500, signal);
  }
  return { ended: false };
}

/** An element with text (never HTML) and attributes. */
export function el(tag, text, attrs = {}) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  return node;
}
