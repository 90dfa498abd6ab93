// The HTTP API as the console calls it: the key lives only in this tab's sessionStorage and
// goes out as `Authorization: Bearer <key>` on same-origin requests, never anywhere else.

const KEY = "rayfleet.apiKey";
export const TERMINAL = new Set(["run.completed", "run.failed", "run.cancelled"]);

export function getKey() { return sessionStorage.getItem(KEY); }
export function setKey(key) { sessionStorage.setItem(KEY, key); }
export function forgetKey() { sessionStorage.removeItem(KEY); }

function headers(extra = {}) {
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
  const response = await fetch(path, init);
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
    const url = `/v1/runs/${encodeURIComponent(runId)}/events?after=${after}`;
    let response;
    try {
      response = await fetch(url, { headers: headers({ Accept: "text/event-stream" }), signal });
    } catch (error) {
      if (signal && signal.aborted) return { ended: false };
      await pause(500);
      continue;
    }
    if (!response.ok) return { ended: false, status: response.status };
    const ended = await readFrames(response.body, (event) => {
      if (event.seq <= after) return false;  // a replayed frame: shown once only
      after = event.seq;
      onEvent(event);
      return TERMINAL.has(event.kind);
    });
    if (ended) return { ended: true };
    if (signal && signal.aborted) return { ended: false };
    await pause(500);
  }
  return { ended: false };
}

async function readFrames(body, handle) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let data = [];
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return false;
      buffer += value;
      let newline;
      while ((newline = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, newline).replace(/\r$/, "");
        buffer = buffer.slice(newline + 1);
        if (line === "") {
          const text = data.join("\n");
          data = [];
          if (text && handle(JSON.parse(text))) return true;
        } else if (line.startsWith("data:")) {
          data.push(line.slice(5).replace(/^ /, ""));
        }  // id:, event: and ": ping" comments: the data carries seq and kind
      }
    }
  } catch {
    return false;  // a cut stream: the caller resumes
  } finally {
    reader.cancel().catch(() => {});  // close the connection, whatever ended the read
  }
}

function pause(ms) { return new Promise((resolve) => setTimeout(resolve, ms)); }

/** An element with text (never HTML) and attributes. */
export function el(tag, text, attrs = {}) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  return node;
}
