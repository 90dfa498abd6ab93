// Fleet: every tenant's usage against its limits (GET /v1/admin/tenants: today's dollars,
// runs in progress, bucket levels) and its cost per successful run (GET /v1/admin/costs).
import { call, el, problemText } from "./api.js";
import { money, percent } from "./format.js";

/** The tenants table, filled into `root` (admin key). */
export async function showTenants(root) {
  const [tenants, costs] = await Promise.all([call("GET", "/v1/admin/tenants"), call("GET", "/v1/admin/costs")]);
  if (!tenants.ok) {
    root.replaceChildren(el("p", problemText(tenants), { class: "error" }));
    return;
  }
  const byTenant = new Map(costs.ok ? costs.data.tenants.map((c) => [c.tenant, c.stats]) : []);
  const table = el("table", null, { id: "tenant-table" });
  const head = el("tr");
  for (const title of ["tenant", "agents", "spent today", "runs in progress", "requests / min", "tokens / min", "runs", "success", "cost / success", "own keys"]) head.append(el("th", title));
  table.append(head);
  for (const tenant of tenants.data.tenants) table.append(row(tenant, byTenant.get(tenant.id)));
  root.replaceChildren(table);
  if (!costs.ok) root.append(el("p", `costs: ${problemText(costs)}`, { class: "error" }));
}

function row(tenant, stats) {
  const { limits } = tenant;
  const usage = tenant.usage || {};
  const tr = el("tr", null, { "data-tenant": tenant.id });
  const spent = (usage.spent_usd || 0) + (usage.reserved_usd || 0);
  const cells = [
    tenant.id,
    tenant.agents ? tenant.agents.join(", ") : "all",
    gauge(spent, limits.daily_budget_usd, (v) => money(v, 4), "budget"),
    gauge(usage.running_runs || 0, limits.concurrent_runs, String, "runs"),
    bucket(usage.requests_available, limits.requests_per_min, "requests"),
    bucket(usage.tokens_available, limits.tokens_per_min, "tokens"),
    stats ? stats.runs : 0,
    stats ? percent(stats.success_rate) : "–",
    stats ? money(stats.cost_per_success_usd, 4) || "–" : "–",
    (tenant.own_credentials || []).join(", "),
  ];
  for (const cell of cells) {
    const td = el("td");
    td.append(cell instanceof Node ? cell : String(cell));
    tr.append(td);
  }
  return tr;
}

/** `used` against `cap` (null: unlimited) as a bar and figures. */
function gauge(used, cap, show, name) {
  const wrap = el("span", null, { class: `usage usage-${name}` });
  if (cap === null || cap === undefined) {
    wrap.append(`${show(used)} (no limit)`);
    return wrap;
  }
  const bar = el("progress", null, { max: String(cap), value: String(Math.min(used, cap)) });
  wrap.append(bar, ` ${show(used)} / ${show(cap)}`);
  return wrap;
}

/** A token bucket: what is used of the per-minute limit right now (capacity less the level). */
function bucket(available, cap, name) {
  if (cap === null || cap === undefined) return el("span", "no limit", { class: `usage usage-${name}` });
  return gauge(Math.max(cap - Math.floor(available ?? cap), 0), cap, String, name);
}
