// The runs list: filters (agent, version, status, time, tenant for the admin), newest first.
// The first page is live (new runs appear, statuses change); Next pages by cursor, and
// "Newest" goes back to the live first page. The filters live in the URL: #/runs?status=failed
import { call, el, problemText } from "./api.js";
import { followRuns } from "./liveruns.js";
import { runTable } from "./runtable.js";

const STATUSES = ["running", "awaiting_approval", "completed", "failed", "cancelled"];
const TIMES = ["since", "until"];
const TEXTS = ["version", "tenant"];
const LIMIT = 50;

export async function runsPage(root, params) {
  root.append(el("h2", "Runs"));
  const form = filterForm(params);
  const mode = el("span", "", { class: "meta", id: "runs-mode", role: "status" });
  const body = el("div", null, { id: "runs-body" });
  const pager = el("div", null, { class: "pager", id: "runs-pager" });
  const modeLine = el("p", "Updates: ", { class: "meta" });
  modeLine.append(mode);
  root.append(form, modeLine, body, pager);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    location.hash = `#/runs?${formQuery(form)}`;  // the router shows the page again
  });
  fillAgents(form.elements.agent, params.get("agent"));

  const query = formQuery(form);
  const limit = Number(params.get("limit")) || LIMIT;
  let live = null;  // the first page's stream while it is shown
  let asked = 0;  // the page last asked for: an older answer arriving late is dropped
  const stopLive = () => { if (live) live.abort(); live = null; };
  const show = (data, page) => {
    body.replaceChildren(runTable(data.runs || [], "runs-table", (page - 1) * limit + 1));
    body.dataset.page = String(page);
    body.dataset.query = query;  // which filters the rows shown answer
    pager.replaceChildren();
    if (page > 1) pager.append(button("Newest (live)", "runs-first", () => first()));
    if (data.next_cursor) pager.append(button("Next page", "runs-next", () => later(data.next_cursor, page + 1)));
  };
  const refused = (result) => {
    stopLive();
    body.replaceChildren(el("p", problemText(result), { class: "error", id: "runs-error" }));
    pager.replaceChildren();
  };
  const first = () => {
    stopLive();
    asked++;
    live = new AbortController();
    followRuns(query, {
      onPage: (data) => show(data, 1),
      onMode: (name) => { mode.textContent = name; mode.dataset.mode = name; },
      onError: refused,
    }, live.signal);
  };
  const later = async (cursor, page) => {
    stopLive();
    const mine = ++asked;
    mode.textContent = `paused on page ${page}`;
    mode.dataset.mode = "paused";
    const result = await call("GET", `/v1/runs?${query}&cursor=${encodeURIComponent(cursor)}`);
    if (mine !== asked || live) return;
    if (result.ok) show(result.data, page);
    else refused(result);
  };
  first();
  return stopLive;
}

function filterForm(params) {
  const form = el("form", null, { id: "runs-filters", class: "filters" });
  const field = (label, input) => {
    const wrap = el("label", null, { class: "filter" });
    wrap.append(`${label} `, input);
    form.append(wrap);
  };
  field("agent", el("select", null, { id: "filter-agent", name: "agent" }));
  const version = el("input", null, { id: "filter-version", name: "version", size: "6" });
  version.value = params.get("version") || "";
  field("version", version);
  const status = el("select", null, { id: "filter-status", name: "status" });
  status.append(el("option", "any", { value: "" }), ...STATUSES.map((s) => el("option", s, { value: s })));
  status.value = params.get("status") || "";
  field("status", status);
  for (const name of TIMES) {
    const input = el("input", null, { id: `filter-${name}`, name, type: "datetime-local" });
    const unix = Number(params.get(name));
    if (unix) input.value = localInput(unix);
    field(name, input);
  }
  const limit = el("input", null, { id: "filter-limit", name: "limit", type: "number", min: "1", max: "200" });
  limit.value = params.get("limit") || String(LIMIT);
  field("per page", limit);
  const tenant = el("input", null, { id: "filter-tenant", name: "tenant", size: "8", placeholder: "admin key only" });
  tenant.value = params.get("tenant") || "";
  field("tenant", tenant);
  form.append(el("button", "Filter", { type: "submit", id: "filter-apply" }));
  const clear = button("Clear", "filter-clear", () => { location.hash = "#/runs"; });
  form.append(" ", clear);
  return form;
}

/** The form's filters as a query string (times as unix seconds). */
function formQuery(form) {
  const query = new URLSearchParams();
  if (form.elements.agent.value) query.set("agent", form.elements.agent.value);
  for (const name of TEXTS) {
    const value = form.elements[name].value.trim();
    if (value) query.set(name, value);
  }
  if (form.elements.status.value) query.set("status", form.elements.status.value);
  for (const name of TIMES) {
    const value = form.elements[name].value;
    if (value) query.set(name, String(Math.floor(new Date(value).getTime() / 1000)));
  }
  const limit = Number(form.elements.limit.value);
  if (limit && limit !== LIMIT) query.set("limit", String(limit));
  return query.toString();
}

async function fillAgents(select, wanted) {
  select.append(el("option", "any", { value: "" }));
  if (wanted) select.append(el("option", wanted, { value: wanted }));  // before the list arrives
  select.value = wanted || "";
  const agents = await call("GET", "/v1/agents");
  if (!agents.ok) return;
  for (const agent of agents.data.agents) {
    if (agent.name !== wanted) select.append(el("option", agent.name, { value: agent.name }));
  }
}

/** A unix time as a datetime-local input's value, in the reader's time zone. */
function localInput(unix) {
  const date = new Date(unix * 1000);
  const pad = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}T${pad(date.getHours())}:${pad(date.getMinutes())}`;
}

function button(text, id, onClick) {
  const node = el("button", text, { type: "button", id });
  node.addEventListener("click", onClick);
  return node;
}
