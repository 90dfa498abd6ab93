// A run's budget progress: steps, tokens, cost and time against the agent's limits, from
// its `budget.progress` events (one after each step).
import { el } from "./api.js";
import { money, seconds } from "./format.js";

const LIMITS = [
  ["steps", (e) => [e.step, e.max_steps], (used, cap) => `${used} / ${cap} steps`],
  ["tokens", (e) => [e.tokens, e.max_tokens], (used, cap) => `${used} / ${cap} tokens`],
  ["cost", (e) => [e.cost_usd, e.max_cost_usd], (used, cap) => `${money(used)} / ${money(cap, 2)}`],
  ["time", (e) => [e.elapsed_s, e.elapsed_s + e.time_left_s], (used, cap) => `${seconds(used)} / ${seconds(cap)}`],
];

/** The budget box: hidden until the first progress event, then one bar per limit. */
export class Budget {
  constructor(root) {
    this.root = root;
    root.hidden = true;
    this.rows = new Map();
    for (const [name] of LIMITS) {
      const bar = el("progress", null, { id: `budget-${name}`, max: "1", value: "0" });
      const text = el("span", "", { class: "meta" });
      const row = el("div", null, { class: "budget-row" });
      row.append(el("span", name, { class: "budget-name" }), bar, text);
      root.append(row);
      this.rows.set(name, { bar, text });
    }
  }

  update(event) {
    this.root.hidden = false;
    for (const [name, figures, label] of LIMITS) {
      const [used, cap] = figures(event);
      const { bar, text } = this.rows.get(name);
      bar.max = cap > 0 ? cap : 1;
      bar.value = Math.min(used, bar.max);
      text.textContent = label(used, cap);
    }
  }
}
