// A run's waterfall: one bar per step, model call (discarded attempts and the time lost to
// failed attempts before a fallback answered too) and tool call,
// placed on the run's clock from the events' timestamps, with its duration and cost.
// Bars are positioned through the CSSOM (element.style), which the page's CSP allows;
// no style attribute is ever written.
import { el, TERMINAL } from "./api.js";
import { money, seconds, tally } from "./format.js";

export class Waterfall {
  constructor(root) {
    this.root = root;
    this.start = null;     // run.created's ts
    this.now = null;       // the latest ts seen
    this.ended = false;
    this.steps = new Map();  // step -> {start, end, cost, items: [bar]}
    this.tools = new Map();  // call_id -> bar
  }

  /** Take one event of the run (not of its sub-agents: a sub-agent is its tool call's bar). */
  add(event) {
    if (!event.ts) return;
    if (this.start === null) this.start = event.ts;
    this.now = Math.max(this.now ?? event.ts, event.ts);
    const step = event.step ? this.step(event.step, event.ts) : null;
    switch (event.kind) {
      case "step.started": this.closeSteps(event.ts); break;
      case "model.discarded":
        step.items.push(bar("model", `discarded ${event.provider || ""}`.trim(), step.cursor, event.ts, event.cost_usd, "discarded"));
        step.cursor = event.ts;
        step.cost += event.cost_usd || 0;
        break;
      case "model.completed": {
        const from = Math.max(step.cursor, event.ts - (event.latency_ms || 0) / 1000);
        if (event.tried && event.tried.length && from > step.cursor) {
          // latency_ms is the answering call's: the time before it went to failed attempts
          // (not already shown as discarded) and the waits between them.
          step.items.push(bar("attempts", `retries: ${tally(event.tried)}`, step.cursor, from, 0, "failed"));
        }
        step.items.push(bar("model", `${event.provider}/${event.model}`, from, event.ts, event.cost_usd, event.cached ? "cached" : ""));
        step.cursor = event.ts;
        step.cost += event.cost_usd || 0;
        break;
      }
      case "context.pruned": step.cost += event.cost_usd || 0; break;
      case "tool.call": {
        const item = bar("tool", event.tool, event.ts, null, 0, "");
        this.tools.set(event.call_id, item);
        step.items.push(item);
        break;
      }
      case "tool.result": {
        const item = this.tools.get(event.call_id);
        if (item) {
          item.end = event.ts;
          item.cost = event.cost_usd || 0;
          item.note = event.ok ? (event.cached ? "cached" : "") : "failed";
        }
        step.cost += event.cost_usd || 0;
        break;
      }
      default:
        if (TERMINAL.has(event.kind)) { this.closeSteps(event.ts); this.ended = true; }
    }
    if (step) step.last = Math.max(step.last, event.ts);
    if (event.kind !== "model.delta") this.render();
  }

  step(n, ts) {
    if (!this.steps.has(n)) this.steps.set(n, { n, start: ts, end: null, last: ts, cursor: ts, cost: 0, items: [] });
    return this.steps.get(n);
  }

  closeSteps(ts) {
    for (const step of this.steps.values()) if (step.end === null && step.start < ts) step.end = ts;
  }

  render() {
    const span = Math.max((this.now ?? 0) - (this.start ?? 0), 0.001);
    const rows = [];
    for (const step of [...this.steps.values()].sort((a, b) => a.n - b.n)) {
      rows.push(this.row({ kind: "step", label: `step ${step.n}`, start: step.start, end: step.end ?? this.now, cost: step.cost, note: step.end === null && !this.ended ? "running" : "" }, span));
      for (const item of step.items) rows.push(this.row({ ...item, end: item.end ?? this.now, note: item.end === null ? "running" : item.note }, span));
    }
    const axis = el("p", `0 → ${seconds(span)} since the run was created${this.ended ? "" : " (live)"}`, { class: "meta wf-axis" });
    this.root.replaceChildren(axis, ...rows);
  }

  row(item, span) {
    const duration = Math.max(item.end - item.start, 0);
    const row = el("div", null, { class: "wf-row", "data-kind": item.kind });
    const track = el("div", null, { class: "wf-track" });
    const shown = el("div", null, { class: "wf-bar", "data-kind": item.kind, title: `${item.label}: ${seconds(duration)}` });
    if (item.note) shown.dataset.note = item.note;
    // The CSSOM, not a style attribute: allowed under `style-src 'self'`.
    shown.style.left = `${((item.start - this.start) / span) * 100}%`;
    shown.style.width = `${(duration / span) * 100}%`;
    track.append(shown);
    const figures = `${seconds(duration)} · ${money(item.cost || 0)}${item.note ? ` · ${item.note}` : ""}`;
    row.append(el("span", item.label, { class: "wf-label" }), track, el("span", figures, { class: "wf-figure" }));
    return row;
  }
}

function bar(kind, label, start, end, cost, note) {
  return { kind, label, start, end, cost: cost || 0, note };
}
