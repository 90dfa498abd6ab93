// Fleet (admin key): the kill switches, set and cleared with reasons; every tenant's usage
// against its limits (tenants.js); provider health (providers.js).
import { call, el, problemText } from "./api.js";
import { showProviders } from "./providers.js";
import { showTenants } from "./tenants.js";

const SCOPES = ["agents", "versions", "tenants", "tools", "models", "global"];

export async function fleetPage(root) {
  root.append(el("h2", "Fleet"));
  const message = el("div", null, { id: "fleet-message" });
  const switches = el("div", null, { id: "kill-switches" });
  const form = el("form", null, { class: "stack", id: "kill-form" });
  const scope = el("select", null, { id: "kill-scope" });
  for (const name of SCOPES) scope.append(el("option", name, { value: name }));
  const name = el("input", null, { id: "kill-name", placeholder: "agent, agent@version, tenant, tool or model" });
  const reason = el("input", null, { id: "kill-reason", required: "", placeholder: "why (shown to callers)" });
  form.append(el("label", "Scope", { for: "kill-scope" }), scope, el("label", "Name", { for: "kill-name" }), name,
    el("label", "Reason", { for: "kill-reason" }), reason, el("button", "Switch off", { type: "submit", id: "kill-set" }));
  const tenants = el("div", null, { id: "tenants" });
  const providers = el("div", null, { id: "providers" });
  root.append(message, el("h3", "Kill switches"), switches, form, el("h3", "Tenants"), tenants,
    el("h3", "Providers"), providers);

  const send = async (body) => {
    const result = await call("POST", "/v1/admin/kill", body);
    if (!result.ok) {
      message.replaceChildren(el("p", problemText(result), { class: "error" }));
      return;
    }
    message.replaceChildren();
    showSwitches(switches, result.data.kill, send);
  };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    send({ scope: scope.value, name: scope.value === "global" ? "" : name.value.trim(), reason: reason.value.trim() });
  });

  const current = await call("GET", "/v1/admin/kill");
  if (!current.ok) {
    message.replaceChildren(el("p", `${problemText(current)} (the Fleet page needs the admin key)`, { class: "error", id: "fleet-denied" }));
    form.hidden = true;
    return null;
  }
  showSwitches(switches, current.data.kill, send);
  await Promise.all([showTenants(tenants), showProviders(providers)]);
  return null;
}

function showSwitches(root, kill, send) {
  const rows = [];
  if (kill.global_reason) rows.push(["global", "", kill.global_reason]);
  for (const scope of SCOPES.slice(0, -1)) {
    for (const [name, reason] of Object.entries(kill[scope] || {})) rows.push([scope, name, reason]);
  }
  if (!rows.length) {
    root.replaceChildren(el("p", "Nothing is switched off.", { class: "note", id: "kill-none" }));
    return;
  }
  const table = el("table", null, { id: "kill-table" });
  for (const [scope, name, reason] of rows) {
    const row = el("tr", null, { "data-scope": scope, "data-name": name });
    const clear = el("button", "Switch on", { type: "button", class: "kill-clear" });
    clear.addEventListener("click", () => send({ scope, name, reason: null }));
    const action = el("td");
    action.append(clear);
    row.append(el("td", scope), el("td", name), el("td", reason), action);
    table.append(row);
  }
  root.replaceChildren(table);
}
