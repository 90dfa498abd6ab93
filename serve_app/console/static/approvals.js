// Approvals: a tool call the run waits on, with approve, edit and reject buttons that call
// POST /v1/runs/{run_id}/approvals/{call_id}; once `approval.decided` arrives (from this tab,
// another tab, another person or the deadline) the box says what was decided.
import { call, el, problemText } from "./api.js";
import { when } from "./format.js";

const DONE = { approve: "approved", edit: "edited and approved", reject: "rejected" };
const boxes = new Map();  // `${runId} ${callId}` -> the box of a call that asked

/** The element to show for `event` in the run's approvals box, or null. */
export function approvalFor(event, runId) {
  if (event.kind === "approval.requested") {
    const box = requested(event, runId);
    boxes.set(`${runId} ${event.call_id}`, box);
    return box;
  }
  if (event.kind === "approval.decided") {
    const box = boxes.get(`${runId} ${event.call_id}`);
    if (box) decided(box, event);
  }
  return null;
}

function requested(event, runId) {
  const box = el("div", null, { class: "approval", "data-call": event.call_id });
  const args = el("textarea", null, { class: "approval-arguments", rows: "4", cols: "60" });
  args.value = JSON.stringify(event.arguments, null, 2);
  const note = el("input", null, { class: "approval-message", size: "40", placeholder: "message (sent to the model on reject)" });
  const message = el("div", null, { class: "approval-result" });
  const buttons = el("p", null, { class: "approval-buttons" });
  const send = async (decision) => {
    const body = { decision };
    if (decision === "edit") {
      try { body.arguments = JSON.parse(args.value); } catch (error) {
        message.replaceChildren(el("p", `arguments are not JSON: ${error.message}`, { class: "error" }));
        return;
      }
    }
    if (note.value.trim()) body.message = note.value.trim();
    for (const button of buttons.querySelectorAll("button")) button.disabled = true;
    const path = `/v1/runs/${encodeURIComponent(runId)}/approvals/${encodeURIComponent(event.call_id)}`;
    const result = await call("POST", path, body);
    if (!result.ok) {
      message.replaceChildren(el("p", problemText(result), { class: "error approval-error" }));
      for (const button of buttons.querySelectorAll("button")) button.disabled = false;
    }
  };
  for (const [decision, label] of [["approve", "Approve"], ["edit", "Run with these arguments"], ["reject", "Reject"]]) {
    const button = el("button", label, { type: "button", class: `approval-${decision}` });
    button.addEventListener("click", () => send(decision));
    buttons.append(button, " ");
  }
  box.append(
    el("p", `${event.tool} waits for: ${event.deciders.join(" or ")} · decide by ${when(event.deadline)}`, { class: "meta" }),
    args, note, buttons, message,
  );
  return box;
}

function decided(box, event) {
  for (const control of box.querySelectorAll("button, textarea, input")) control.disabled = true;
  const what = event.decision === "timeout" ? "no decision before the deadline" : `${DONE[event.decision]} by ${event.by}`;
  const text = event.message ? `${what}: ${event.message}` : what;
  box.querySelector(".approval-result").replaceChildren(el("p", text, { class: "approval-decided" }));
  box.dataset.decided = event.decision;
}
