// A table of run items (GET /v1/runs, GET /v1/threads/{id}/runs): each row links to its run
// and, when the run belongs to a conversation, to that thread's page.
import { el } from "./api.js";
import { money, seconds, when } from "./format.js";

const COLUMNS = ["#", "run", "status", "agent", "version", "assignment", "tenant", "thread",
  "created", "took", "steps", "tokens", "cost", "error"];

/** The table of `runs` (its id `id`), numbered from `first`; "No runs." when empty. */
export function runTable(runs, id, first = 1) {
  if (!runs.length) return el("p", "No runs.", { class: "notice", id: `${id}-empty` });
  const table = el("table", null, { id });
  const head = el("tr");
  for (const title of COLUMNS) head.append(el("th", title));
  table.append(el("thead"), el("tbody"));
  table.tHead.append(head);
  table.tBodies[0].append(...runs.map((run, i) => row(run, first + i)));
  return table;
}

function row(run, n) {
  const tr = el("tr", null, { "data-run": run.run_id, "data-status": run.status, "data-agent": run.agent, "data-tenant": run.tenant });
  const thread = run.thread_id
    ? el("a", run.thread_id, { href: `#/threads/${encodeURIComponent(run.thread_id)}`, class: "thread-link" })
    : "";
  const cells = [
    n,
    el("a", run.run_id, { href: `#/runs/${encodeURIComponent(run.run_id)}`, class: "run-link" }),
    el("span", run.status, { class: "badge", "data-status": run.status }),
    run.agent, run.version, run.assignment, run.tenant, thread,
    when(run.created_at),
    run.ended_at ? seconds(run.ended_at - run.created_at) : "",
    run.ended_at ? run.steps : "", run.ended_at ? run.tokens : "",
    run.ended_at ? money(run.cost_usd, 4) : "",
    run.error_code || "",
  ];
  for (const cell of cells) {
    const td = el("td");
    td.append(cell instanceof Node ? cell : String(cell ?? ""));
    tr.append(td);
  }
  return tr;
}
