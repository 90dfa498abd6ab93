// Versions (`#/versions`): per agent, the live traffic split (weights, stable, canary,
// shadows, a rollback in force, versions switched off) and each version's outcomes; the
// canary's figures against the stable version's, as the canary gate judges them. With the
// admin key: shadow agreement and a Rollback button.
import { call, el, problemText } from "./api.js";
import { money, percent, seconds } from "./format.js";

export async function versionsPage(root) {
  root.append(el("h2", "Versions"));
  const [agents, admin] = await Promise.all([call("GET", "/v1/agents"), isAdmin()]);
  if (!agents.ok) {
    root.append(el("p", problemText(agents), { class: "error", id: "versions-error" }));
    return null;
  }
  for (const agent of agents.data.agents) root.append(agentBox(agent, admin));
  return null;
}

/** Whether this key is the admin key (it may read the kill switches). */
async function isAdmin() {
  return (await call("GET", "/v1/admin/kill")).ok;
}

function agentBox(agent, admin) {
  const box = el("section", null, { class: "agent", "data-agent": agent.name });
  const traffic = agent.traffic;
  box.append(el("h3", agent.name), el("p", agent.description || "", { class: "meta" }));
  box.append(el("p", splitText(traffic), { class: "split" }));
  if (traffic.rolled_back) {
    box.append(el("p", `canary rolled back: ${traffic.rolled_back.reason}`, { class: "notice rolled-back" }));
  }
  for (const [version, reason] of Object.entries(traffic.killed || {})) {
    box.append(el("p", `${version} switched off: ${reason}`, { class: "error killed" }));
  }
  box.append(versionTable(agent));
  if (traffic.canary) box.append(canaryBox(agent));
  if (admin) adminControls(box, agent);
  return box;
}

function splitText(traffic) {
  const total = Object.values(traffic.weights).reduce((a, b) => a + b, 0) || 1;
  const parts = Object.entries(traffic.weights).map(([v, w]) => `${v} ${Math.round((w / total) * 1000) / 10}%`);
  const shadows = traffic.shadows.map((s) => `${s.version} mirrors ${Math.round(s.sample * 100)}% of ${s.primary || "all"} runs`);
  return [`split: ${parts.join(" · ")}`, `stable ${traffic.stable}`, traffic.canary ? `canary ${traffic.canary}` : "",
    ...shadows.map((s) => `shadow: ${s}`)].filter(Boolean).join(" | ");
}

const errorRate = (s) => (s.runs ? (s.failures + s.cancelled) / s.runs : null);

function role(traffic, version) {
  if (version === traffic.canary) return "canary";
  if (version === traffic.stable) return "stable";
  if (traffic.shadows.some((s) => s.version === version)) return "shadow";
  return (traffic.weights[version] ?? 0) > 0 ? "weighted" : "idle";
}

function versionTable(agent) {
  const table = el("table", null, { class: "version-table" });
  const head = el("tr");
  for (const title of ["version", "role", "weight", "runs", "success", "errors", "cost / success", "p95", "your runs", "your cost / success", "tools"]) head.append(el("th", title));
  table.append(head);
  const total = Object.values(agent.traffic.weights).reduce((a, b) => a + b, 0) || 1;
  for (const version of agent.versions) {
    const s = version.stats;
    const mine = (version.tenant && version.tenant.stats) || { runs: "–", cost_per_success_usd: null };
    const row = el("tr", null, { "data-version": version.version });
    const weight = agent.traffic.weights[version.version];
    const cells = [version.version, role(agent.traffic, version.version),
      weight === undefined ? "–" : `${Math.round((weight / total) * 1000) / 10}%`,
      s.runs, percent(s.success_rate), percent(errorRate(s)), money(s.cost_per_success_usd) || "–",
      s.p95_run_s === null ? "–" : seconds(s.p95_run_s), mine.runs, money(mine.cost_per_success_usd) || "–",
      version.tools.join(", ")];
    for (const cell of cells) row.append(el("td", cell));
    table.append(row);
  }
  return table;
}

/** The canary's error rate, cost per successful run and p95 against the stable version's. */
function canaryBox(agent) {
  const traffic = agent.traffic;
  const stats = Object.fromEntries(agent.versions.map((v) => [v.version, v.stats]));
  const stable = stats[traffic.stable];
  const canary = stats[traffic.canary];
  const box = el("div", null, { class: "canary", id: `canary-${agent.name}` });
  box.append(el("h4", `Canary ${traffic.canary} against stable ${traffic.stable}`));
  if (!stable || !canary) return box;
  const table = el("table", null, { class: "canary-table" });
  const head = el("tr");
  for (const title of ["figure", traffic.stable, traffic.canary, "canary / stable"]) head.append(el("th", title));
  table.append(head);
  const figures = [
    ["error rate", errorRate(stable), errorRate(canary), percent],
    ["cost per successful run", stable.cost_per_success_usd, canary.cost_per_success_usd, (v) => money(v) || "–"],
    ["p95 run time", stable.p95_run_s, canary.p95_run_s, (v) => (v === null ? "–" : seconds(v))],
    ["runs", stable.runs, canary.runs, String, false],
  ];
  for (const [name, a, b, show, compared = true] of figures) {
    const ratio = compared && a && b !== null && b !== undefined ? `${(b / a).toFixed(2)}×` : "–";
    const row = el("tr", null, { "data-figure": name });
    for (const cell of [name, show(a), show(b), ratio]) row.append(el("td", cell));
    table.append(row);
  }
  box.append(table, el("p", "All recorded runs; the gate judges its own window against the thresholds in the deploy config.", { class: "meta" }));
  return box;
}

function adminControls(box, agent) {
  const shadows = el("div", null, { class: "shadows" });
  box.append(shadows);
  call("GET", `/v1/admin/agents/${encodeURIComponent(agent.name)}/shadows`).then((found) => {
    if (!found.ok) { shadows.append(el("p", problemText(found), { class: "error" })); return; }
    shadows.append(el("h4", "Shadow agreement"), shadowTable(found.data.pairs));
  });
  if (!agent.traffic.canary || agent.traffic.rolled_back) return;  // nothing (more) to roll back
  const message = el("span", "", { class: "meta rollback-message" });
  const rollback = el("button", `Roll back ${agent.traffic.canary}`, { type: "button", class: "rollback" });
  rollback.addEventListener("click", async () => {
    rollback.disabled = true;
    const done = await call("POST", `/v1/admin/agents/${encodeURIComponent(agent.name)}/rollback`);
    if (!done.ok) {
      rollback.disabled = false;
      message.textContent = problemText(done);
      return;
    }
    box.replaceWith(agentBox({ ...agent, traffic: done.data.traffic }, true));
  });
  const line = el("p");
  line.append(rollback, " ", message);
  box.append(line);
}

function shadowTable(pairs) {
  if (!pairs.length) return el("p", "No shadow runs recorded.", { class: "note shadow-none" });
  const table = el("table", null, { class: "shadow-table" });
  const head = el("tr");
  for (const title of ["primary → shadow", "pairs", "agreement", "errors (primary / shadow)", "mean steps", "p50", "cost (primary / shadow)"]) head.append(el("th", title));
  table.append(head);
  for (const p of pairs) {
    const row = el("tr", null, { "data-shadow": p.shadow_version });
    for (const cell of [`${p.primary_version} → ${p.shadow_version}`, p.pairs, percent(p.agreement_rate),
      `${p.primary_errors} / ${p.shadow_errors}`, `${p.primary_mean_steps.toFixed(1)} / ${p.shadow_mean_steps.toFixed(1)}`,
      `${seconds(p.primary_p50_run_s)} / ${seconds(p.shadow_p50_run_s)}`, `${money(p.primary_cost_usd, 4)} / ${money(p.shadow_cost_usd, 4)}`]) {
      row.append(el("td", cell));
    }
    table.append(row);
  }
  return table;
}
