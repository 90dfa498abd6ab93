// A run's page: its summary, then its live timeline from the event stream (tokens as they
// stream, each tool call with its arguments and result, discarded attempts, pruning, budget,
// sub-agents' events nested), the final output and status, and a cancel button.
import { call, el, problemText, streamEvents, TERMINAL } from "./api.js";

const STATUS = { "run.completed": "completed", "run.failed": "failed", "run.cancelled": "cancelled" };

export async function runPage(root, runId) {
  root.append(el("h2", `Run ${runId}`));
  const summary = await call("GET", `/v1/runs/${encodeURIComponent(runId)}`);
  if (summary.status === 404) {
    root.append(el("p", "Run not found: no run with this id is visible to this key.", { class: "error", id: "not-found" }));
    return null;
  }
  if (!summary.ok) {
    root.append(el("p", problemText(summary), { class: "error" }));
    return null;
  }
  const run = summary.data;
  const status = el("span", run.status, { class: "badge", id: "run-status", "data-status": run.status });
  const cancel = el("button", "Cancel run", { id: "run-cancel", type: "button" });
  cancel.disabled = run.status !== "running";
  const meta = el("p", `${run.agent}@${run.version} · tenant ${run.tenant} · ${run.assignment}`, { class: "meta", id: "run-meta" });
  const budget = el("p", "", { class: "meta", id: "run-budget" });
  const message = el("div");
  const statusLine = el("p");
  statusLine.append("Status: ", status, " ", cancel);
  root.append(statusLine, meta, el("p", `Input: ${run.input}`, { id: "run-input" }), budget, message);
  const timeline = el("div", null, { id: "timeline" });
  const output = el("div", null, { class: "output", id: "run-output", hidden: "" });
  root.append(timeline, output);

  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    const result = await call("POST", `/v1/runs/${encodeURIComponent(runId)}/cancel`);
    if (!result.ok) message.replaceChildren(el("p", problemText(result), { class: "error" }));
  });

  const view = new Timeline(timeline);
  const finish = (kind, text) => {
    status.textContent = STATUS[kind];
    status.dataset.status = STATUS[kind];
    cancel.disabled = true;
    output.hidden = false;
    output.replaceChildren(el("h3", kind === "run.completed" ? "Output" : "Ended"), el("pre", text));
  };
  const stop = new AbortController();
  const streamed = streamEvents(runId, (event) => {
    if (event.kind === "budget.progress") {
      budget.textContent = `step ${event.step}/${event.max_steps} · tokens ${event.tokens}/${event.max_tokens} · $${event.cost_usd.toFixed(4)}/$${event.max_cost_usd}`;
    } else if (event.kind === "run.completed") {
      finish(event.kind, event.output);
    } else if (event.kind === "run.failed") {
      finish(event.kind, `${event.code}: ${event.message}`);
    } else if (event.kind === "run.cancelled") {
      finish(event.kind, `cancelled: ${event.reason}`);
    }
    if (!TERMINAL.has(event.kind)) view.add(event);
  }, stop.signal);
  streamed.then((result) => {
    if (!result.ended && !stop.signal.aborted) {
      const why = result.status ? `the event stream answered ${result.status}` : "the event stream was lost";
      message.replaceChildren(el("p", `${why}: reload to follow the run again`, { class: "error", id: "stream-lost" }));
    }
  });
  return () => stop.abort();
}

/** The steps of one run (or of a sub-agent, nested). */
class Timeline {
  constructor(root) {
    this.root = root;
    this.steps = new Map();
    this.subagents = new Map();
  }

  step(n) {
    if (!this.steps.has(n)) {
      const box = el("div", null, { class: "step", "data-step": String(n) });
      const tokens = el("div", null, { class: "tokens" });
      box.append(el("h3", `Step ${n}`), tokens);
      this.root.append(box);
      this.steps.set(n, { box, tokens });
    }
    return this.steps.get(n);
  }

  add(event) {
    switch (event.kind) {
      case "step.started": this.step(event.step); break;
      case "model.delta": this.step(event.step).tokens.append(event.text); break;
      case "model.discarded":
        this.note(event.step, `discarded attempt (${event.provider || "provider"}): ${event.reason}`);
        this.step(event.step).tokens.replaceChildren();  // its partial text was thrown away
        break;
      case "model.completed":
        this.note(event.step, `${event.provider}/${event.model} · ${event.usage.input_tokens ?? 0} in, ${event.usage.output_tokens ?? 0} out · $${event.cost_usd.toFixed(5)} · ${Math.round(event.latency_ms)} ms`);
        break;
      case "tool.call": {
        const box = el("div", null, { class: "tool tool-call", "data-call": event.call_id });
        box.append(el("strong", `→ ${event.tool}`), el("pre", JSON.stringify(event.arguments, null, 2), { class: "tool-arguments" }));
        this.step(event.step).box.append(box);
        break;
      }
      case "tool.result": {
        const box = el("div", null, { class: "tool tool-result", "data-call": event.call_id, "data-ok": String(event.ok) });
        box.append(el("strong", `← ${event.tool} ${event.ok ? "ok" : "failed"} · ${Math.round(event.latency_ms)} ms`),
          el("pre", event.ok ? event.output : (event.error || event.output), { class: "tool-output" }));
        this.step(event.step).box.append(box);
        break;
      }
      case "context.pruned":
        this.note(event.step, `context pruned: ${event.tokens_before} → ${event.tokens_after} tokens`);
        break;
      case "memory.degraded": this.note(0, `memory degraded: ${event.reason}`); break;
      case "budget.exceeded": this.note(0, `budget exceeded: ${event.limit} ${event.used}/${event.cap}`); break;
      case "subagent.event": this.subagent(event); break;
      default: break;  // kinds this console does not know: ignored
    }
  }

  note(step, text) {
    const target = step ? this.step(step).box : this.root;
    target.append(el("p", text, { class: "note" }));
  }

  subagent(event) {
    let nested = this.subagents.get(event.call_id);
    if (!nested) {
      const details = el("details", null, { class: "subagent", open: "" });
      details.append(el("summary", `sub-agent ${event.agent}`));
      this.step(event.step).box.append(details);
      nested = new Timeline(details);
      this.subagents.set(event.call_id, nested);
    }
    const inner = event.event;
    if (inner.kind === "run.created") nested.root.append(el("p", `Input: ${inner.input}`, { class: "note" }));
    else if (TERMINAL.has(inner.kind)) nested.root.append(el("p", `${inner.kind}${inner.output ? `: ${inner.output}` : ""}`, { class: "note" }));
    else nested.add(inner);
  }
}
