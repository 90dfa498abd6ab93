// A conversation (`#/threads/<id>`): its runs in order (GET /v1/threads/{id}/runs, oldest
// first, a page at a time), each with what was asked and answered, linking to the run.
import { call, el, problemText } from "./api.js";
import { runTable } from "./runtable.js";

export async function threadPage(root, threadId) {
  root.append(el("h2", `Thread ${threadId}`));
  const body = el("div", null, { id: "thread-body" });
  const turns = el("ol", null, { id: "thread-turns", class: "turns" });
  const pager = el("div", null, { class: "pager" });
  root.append(body, el("h3", "Turns"), turns, pager);
  const path = `/v1/threads/${encodeURIComponent(threadId)}/runs`;
  let shown = 0;
  const load = async (cursor) => {
    const result = await call("GET", cursor ? `${path}?cursor=${encodeURIComponent(cursor)}` : path);
    if (!result.ok) {
      body.replaceChildren(el("p", problemText(result), { class: "error", id: "thread-error" }));
      return;
    }
    const runs = result.data.runs;
    if (!shown && !runs.length) {
      body.replaceChildren(el("p", "No runs in this thread are visible to this key.", { class: "notice", id: "thread-empty" }));
      return;
    }
    body.append(runTable(runs, `thread-table-${shown}`, shown + 1));
    for (const run of runs) turns.append(turn(run));
    shown += runs.length;
    pager.replaceChildren();
    if (result.data.next_cursor) {
      const more = el("button", "More", { type: "button", id: "thread-more" });
      more.addEventListener("click", () => load(result.data.next_cursor));
      pager.append(more);
    }
  };
  await load(null);
  return null;
}

/** One turn: the run's input and output, filled in from its summary. */
function turn(run) {
  const item = el("li", null, { class: "turn", "data-run": run.run_id });
  const link = el("a", `${run.agent}@${run.version} · ${run.status}`, { href: `#/runs/${encodeURIComponent(run.run_id)}` });
  const asked = el("p", "…", { class: "turn-input" });
  const answered = el("p", "", { class: "turn-output" });
  item.append(link, asked, answered);
  call("GET", `/v1/runs/${encodeURIComponent(run.run_id)}`).then((summary) => {
    if (!summary.ok) { asked.textContent = problemText(summary); return; }
    asked.textContent = `asked: ${summary.data.input}`;
    const error = summary.data.error ? `${summary.data.error.code}: ${summary.data.error.message}` : "";
    answered.textContent = summary.data.output ? `answered: ${summary.data.output}` : error;
  });
  return item;
}
