// Server-sent events read from a fetch body (an EventSource cannot send the Authorization
// header): frames parsed as they arrive, comment pings skipped.

/**
 * Read SSE frames from `body` until it ends or `handle({event, id, data})` returns true.
 * `data` is the frame's data lines joined, as text. Returns true if `handle` ended the
 * read, false if the stream ended or was cut (the caller decides whether to reconnect).
 */
export async function readFrames(body, handle) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let frame = { event: "message", id: null, data: [] };
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
          const data = frame.data.join("\n");
          const { event, id } = frame;
          frame = { event: "message", id: null, data: [] };
          if (data && handle({ event, id, data })) return true;
        } else if (line.startsWith("data:")) {
          frame.data.push(field(line, 5));
        } else if (line.startsWith("event:")) {
          frame.event = field(line, 6);
        } else if (line.startsWith("id:")) {
          frame.id = field(line, 3);
        }  // ": ping" comments and unknown fields: skipped, as the SSE spec says
      }
    }
  } catch {
    return false;  // a cut stream (or an aborted fetch)
  } finally {
    reader.cancel().catch(() => {});  // close the connection, whatever ended the read
  }
}

function field(line, from) { return line.slice(from).replace(/^ /, ""); }

/** A promise that resolves after `ms`, or at once when `signal` aborts. */
export function pause(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    if (signal) signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}
