// The runs list's first page, live: `GET /v1/runs` with `Accept: text/event-stream` sends
// the page (`event: runs`, the same JSON as the plain list) at once and again whenever it
// changes. Read through fetch, since an EventSource cannot send the Authorization header.
import { api, headers } from "./api.js";
import { pause, readFrames } from "./sse.js";

const RETRIES = 20;  // consecutive failed connections before giving up; a frame resets it
const POLL_MS = 2000;

/**
 * Follow the first page of `/v1/runs?<query>` until `signal` aborts. Calls onPage(data) with
 * each page, onMode("live" | "polling" | "reconnecting" | "lost") as the connection changes,
 * and onError({status, data}) once if the server refuses (then stops). A server that answers
 * the stream request with plain JSON is polled instead.
 */
export async function followRuns(query, { onPage, onMode, onError }, signal) {
  let failures = 0;
  while (!signal.aborted && failures < RETRIES) {
    let response;
    try {
      response = await fetch(api(`/v1/runs?${query}`), { headers: headers({ Accept: "text/event-stream" }), signal });
    } catch {
      if (signal.aborted) return;
      failures++;
      onMode("reconnecting");
      await pause(1000, signal);
      continue;
    }
    if (!response.ok) {
      let data = null;
      try { data = await response.json(); } catch { data = null; }
      onError({ status: response.status, data });
      return;
    }
    const type = response.headers.get("content-type") || "";
    if (!type.includes("text/event-stream")) {
      onMode("polling");
      try {
        const data = await response.json();
        if (!signal.aborted) onPage(data);
        failures = 0;
      } catch { failures++; }
      await pause(POLL_MS, signal);
      continue;
    }
    onMode("live");
    await readFrames(response.body, (frame) => {
      if (signal.aborted) return true;  // the reader moved on: no late page over theirs
      if (frame.event !== "runs") return false;
      failures = 0;
      onPage(JSON.parse(frame.data));
      return signal.aborted;
    });
    if (signal.aborted) return;
    failures++;
    onMode("reconnecting");
    await pause(1000, signal);
  }
  if (!signal.aborted) onMode("lost");
}
