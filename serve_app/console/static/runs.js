// The runs list: GET /v1/runs with filters, newest first, a page at a time (cursor).
import { call, el, problemText } from "./api.js";

const FILTERS = ["agent", "version", "status"];

export async function runsPage(root) {
  root.append(el("h2", "Runs"));
  const form = el("form", null, { id: "runs-filters" });
  for (const name of FILTERS) {
    form.append(el("label", name, { for: `filter-${name}` }), " ",
      el("input", null, { id: `filter-${name}`, name, size: "12" }), " ");
  }
  form.append(el("button", "Filter", { type: "submit" }));
  const body = el("div", null, { id: "runs-body" });
  root.append(form, body);
  const load = async (cursor) => {
    const query = new URLSearchParams();
    for (const name of FILTERS) {
      const value = form.elements[name].value.trim();
      if (value) query.set(name, value);
    }
    if (cursor) query.set("cursor", cursor);
    const result = await call("GET", `/v1/runs?${query}`);
    if (result.status === 404) {
      body.replaceChildren(el("p", "The runs list is not available on this server yet (GET /v1/runs answered 404). Open a run by its id: #/runs/<run id>.", { class: "notice", id: "runs-unavailable" }));
      return;
    }
    if (!result.ok) {
      body.replaceChildren(el("p", problemText(result), { class: "error" }));
      return;
    }
    body.replaceChildren(table(result.data.runs || result.data.items || []));
    const next = result.data.next_cursor;
    if (next) {
      const more = el("button", "Next page", { type: "button", id: "runs-next" });
      more.addEventListener("click", () => load(next));
      body.append(more);
    }
  };
  form.addEventListener("submit", (event) => { event.preventDefault(); load(null); });
  await load(null);
  return null;
}

function table(runs) {
  const head = el("tr");
  for (const title of ["run", "status", "agent", "version", "tenant", "created", "steps", "cost"]) head.append(el("th", title));
  const rows = runs.map((run) => {
    const row = el("tr", null, { "data-run": run.run_id });
    const link = el("a", run.run_id, { href: `#/runs/${encodeURIComponent(run.run_id)}` });
    const cells = [
      link, el("span", run.status, { class: "badge", "data-status": run.status }),
      run.agent, run.version, run.tenant,
      run.created_at ? new Date(run.created_at * 1000).toLocaleString() : "",
      run.steps ?? "", run.cost_usd !== undefined ? `$${Number(run.cost_usd).toFixed(4)}` : "",
    ];
    for (const cell of cells) {
      const td = el("td");
      td.append(cell instanceof Node ? cell : String(cell ?? ""));
      row.append(td);
    }
    return row;
  });
  const tableNode = el("table", null, { id: "runs-table" });
  tableNode.append(el("thead"), el("tbody"));
  tableNode.tHead.append(head);
  tableNode.tBodies[0].append(...rows);
  if (!runs.length) return el("p", "No runs.", { class: "notice" });
  return tableNode;
}
