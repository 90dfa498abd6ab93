// A run's timeline, built event by event: a box per step with its streamed tokens, each
// tool call with arguments and result, fallbacks, discarded attempts and pruning as notes,
// and each sub-agent as a collapsible box of its own (its input, its steps, its outcome).
import { el, TERMINAL } from "./api.js";
import { money, tally } from "./format.js";

/** The steps of one run (or of a sub-agent, nested). */
export class Timeline {
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
        this.note(event.step, `discarded attempt (${event.provider || "provider"}, ${money(event.cost_usd)}): ${event.reason}`, "discarded");
        this.step(event.step).tokens.replaceChildren();  // its partial text was thrown away
        break;
      case "model.completed": this.modelCompleted(event); break;
      case "tool.call": {
        const box = el("div", null, { class: "tool tool-call", "data-call": event.call_id });
        box.append(el("strong", `→ ${event.tool}`), el("pre", JSON.stringify(event.arguments, null, 2), { class: "tool-arguments" }));
        this.step(event.step).box.append(box);
        break;
      }
      case "tool.result": this.toolResult(event); break;
      case "context.pruned": this.pruned(event); break;
      case "memory.degraded": this.note(0, `memory degraded: ${event.reason}`, "degraded"); break;
      case "budget.exceeded": this.note(0, `budget exceeded: ${event.limit} ${event.used}/${event.cap}`, "exceeded"); break;
      case "subagent.event": this.subagent(event); break;
      default: break;  // kinds this console does not know: ignored
    }
  }

  modelCompleted(event) {
    const usage = event.usage || {};
    const flags = [event.cached ? "cached" : "", event.usage_estimated ? "usage estimated" : ""].filter(Boolean);
    this.note(event.step, `${event.provider}/${event.model} (${event.tier}) · ${usage.input_tokens ?? 0} in, ${usage.output_tokens ?? 0} out · ${money(event.cost_usd)} · ${Math.round(event.latency_ms)} ms${flags.length ? ` · ${flags.join(", ")}` : ""}`, "model");
    if (event.tried && event.tried.length) {
      this.note(event.step, `failed attempts: ${tally(event.tried)}; ${event.provider}/${event.model} answered`, "fallback");
    }
  }

  toolResult(event) {
    const box = el("div", null, { class: "tool tool-result", "data-call": event.call_id, "data-ok": String(event.ok) });
    const extra = [event.cached ? "cached" : "", event.cost_usd ? money(event.cost_usd) : ""].filter(Boolean);
    box.append(el("strong", `← ${event.tool} ${event.ok ? "ok" : "failed"} · ${Math.round(event.latency_ms)} ms${extra.length ? ` · ${extra.join(" · ")}` : ""}`),
      el("pre", event.ok ? event.output : (event.error || event.output), { class: "tool-output" }));
    this.step(event.step).box.append(box);
  }

  pruned(event) {
    const parts = [`context pruned: ${event.tokens_before} → ${event.tokens_after} tokens${event.max_tokens ? ` (max ${event.max_tokens})` : ""}`];
    if (event.truncated && event.truncated.length) parts.push(`${event.truncated.length} tool outputs cut`);
    if (event.summarized) parts.push(`${event.summarized} messages summarized`);
    if (event.dropped) parts.push(`${event.dropped} messages left out`);
    const note = this.note(event.step, parts.join(" · "), "pruned");
    if (event.summary) {
      const details = el("details", null, { class: "summary-text" });
      details.append(el("summary", `new summary by ${event.provider}/${event.model} · ${money(event.cost_usd)}`), el("pre", event.summary));
      note.after(details);
    }
  }

  note(step, text, kind) {
    const target = step ? this.step(step).box : this.root;
    const node = el("p", text, { class: `note note-${kind}` });
    target.append(node);
    return node;
  }

  subagent(event) {
    let nested = this.subagents.get(event.call_id);
    if (!nested) {
      const details = el("details", null, { class: "subagent", open: "", "data-call": event.call_id });
      const summary = el("summary", `sub-agent ${event.agent}`);
      const status = el("span", "running", { class: "badge", "data-status": "running" });
      summary.append(" ", status);
      // Its input and budget line first, whenever their events come.
      const input = el("p", "", { class: "subagent-input" });
      const budget = el("p", "", { class: "meta subagent-budget" });
      details.append(summary, input, budget);
      this.step(event.step).box.append(details);
      nested = new Timeline(details);
      Object.assign(nested, { summary, status, input, budget });
      this.subagents.set(event.call_id, nested);
    }
    const inner = event.event;
    if (inner.kind === "run.created") {
      nested.summary.firstChild.textContent = `sub-agent ${inner.agent}@${inner.version}`;
      nested.input.textContent = `Input: ${inner.input}`;
    } else if (inner.kind === "budget.progress") {
      nested.budget.textContent = `budget: step ${inner.step}/${inner.max_steps} · tokens ${inner.tokens}/${inner.max_tokens} · ${money(inner.cost_usd)}/$${inner.max_cost_usd}`;
    } else if (TERMINAL.has(inner.kind)) {
      const ended = inner.kind.slice(4);
      nested.status.textContent = ended;
      nested.status.dataset.status = ended;
      const detail = inner.output ?? (inner.code ? `${inner.code}: ${inner.message}` : inner.reason);
      nested.root.append(el("p", `${ended}${detail ? `: ${detail}` : ""} · ${money(inner.cost_usd)}`, { class: "note subagent-output" }));
    } else {
      nested.add(inner);
    }
  }
}
