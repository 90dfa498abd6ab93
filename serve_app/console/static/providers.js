// Fleet: provider health, one row per circuit breaker (GET /v1/admin/providers): a provider
// on the deployment's keys ("openai") or on a tenant's own key ("openai#<digest>"), its
// worst state over the hosts and how many hosts are in each state.
import { call, el, problemText } from "./api.js";

const STATES = ["closed", "half_open", "open"];

/** The providers table, filled into `root` (admin key). */
export async function showProviders(root) {
  const found = await call("GET", "/v1/admin/providers");
  if (!found.ok) {
    root.replaceChildren(el("p", problemText(found), { class: "error", id: "providers-error" }));
    return;
  }
  const providers = found.data.providers;
  if (!providers.length) {
    root.replaceChildren(el("p", "No provider has been called yet.", { class: "note", id: "providers-none" }));
    return;
  }
  const table = el("table", null, { id: "provider-table" });
  const head = el("tr");
  for (const title of ["breaker", "provider", "state", "hosts closed", "half open", "open"]) head.append(el("th", title));
  table.append(head);
  for (const p of providers) {
    const row = el("tr", null, { "data-breaker": p.breaker, "data-state": p.state });
    const state = el("span", p.state.replace("_", " "), { class: "badge breaker", "data-state": p.state });
    const cells = [p.breaker, p.provider, state, ...STATES.map((s) => (p.hosts || {})[s] ?? 0)];
    for (const cell of cells) {
      const td = el("td");
      td.append(cell instanceof Node ? cell : String(cell));
      row.append(td);
    }
    table.append(row);
  }
  root.replaceChildren(table);
}
