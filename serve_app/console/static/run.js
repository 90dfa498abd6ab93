// A run's page: its summary, budget progress, live timeline (timeline.js) and waterfall
// (waterfall.js) from the event stream, the final output and status, and a cancel button.
// A tool call that waits for a person shows with approve / edit / reject buttons: approvals.js.
import { call, el, problemText, streamEvents, TERMINAL } from "./api.js";
import { approvalFor } from "./approvals.js";
import { Budget } from "./budget.js";
import { money, when } from "./format.js";
import { Timeline } from "./timeline.js";
import { Waterfall } from "./waterfall.js";

const STATUS = { "run.completed": "completed", "run.failed": "failed", "run.cancelled": "cancelled" };
const LIVE = new Set(["running", "awaiting_approval"]);  // what a cancel still stops

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
  cancel.disabled = !LIVE.has(run.status);
  const meta = el("p", `${run.agent}@${run.version} · tenant ${run.tenant} · ${run.assignment} · created ${when(run.created_at)}`, { class: "meta", id: "run-meta" });
  const cost = el("p", "", { class: "meta", id: "run-cost" });
  const message = el("div");
  const statusLine = el("p");
  statusLine.append("Status: ", status, " ", cancel);
  const approvals = el("section", null, { id: "run-approvals", class: "approvals", hidden: "" });
  approvals.append(el("h3", "Approvals"));
  const budget = new Budget(el("div", null, { id: "run-budget", class: "budget" }));
  const waterfall = el("div", null, { id: "waterfall", class: "waterfall" });
  const timeline = el("div", null, { id: "timeline" });
  const output = el("div", null, { class: "output", id: "run-output", hidden: "" });
  root.append(statusLine, meta, cost, el("p", `Input: ${run.input}`, { id: "run-input" }), message, approvals,
    budget.root, el("h3", "Waterfall"), waterfall, el("h3", "Timeline"), timeline, output);

  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    const result = await call("POST", `/v1/runs/${encodeURIComponent(runId)}/cancel`);
    if (!result.ok) message.replaceChildren(el("p", problemText(result), { class: "error" }));
  });

  const steps = new Timeline(timeline);
  const bars = new Waterfall(waterfall);
  const show = (now) => {
    status.textContent = now;
    status.dataset.status = now;
  };
  const finish = (event, text) => {
    show(STATUS[event.kind]);
    cancel.disabled = true;
    const usage = event.usage || {};
    cost.textContent = `${event.steps} steps · ${usage.input_tokens ?? 0} in, ${usage.output_tokens ?? 0} out · ${money(event.cost_usd)}`;
    output.hidden = false;
    output.replaceChildren(el("h3", event.kind === "run.completed" ? "Output" : "Ended"), el("pre", text));
  };
  const stop = new AbortController();
  const streamed = streamEvents(runId, (event) => {
    if (event.kind === "budget.progress") budget.update(event);
    else if (event.kind === "approval.requested") show("awaiting_approval");
    else if (event.kind === "approval.decided") show("running");
    else if (event.kind === "run.completed") finish(event, event.output);
    else if (event.kind === "run.failed") finish(event, `${event.code}: ${event.message}`);
    else if (event.kind === "run.cancelled") finish(event, `cancelled: ${event.reason}`);
    if (!TERMINAL.has(event.kind)) steps.add(event);
    bars.add(event);
    const approval = approvalFor(event, runId);
    if (approval) {
      approvals.hidden = false;
      approvals.append(approval);
    }
  }, stop.signal);
  streamed.then((result) => {
    if (!result.ended && !stop.signal.aborted) {
      const why = result.status ? `the event stream answered ${result.status}` : "the event stream was lost";
      message.replaceChildren(el("p", `${why}: reload to follow the run again`, { class: "error", id: "stream-lost" }));
    }
  });
  return () => stop.abort();
}
