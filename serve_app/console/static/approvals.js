// Approvals: the hook for issue 14 (approvals and tool guardrails). No approval events or
// endpoints exist yet, so the run page shows no approve / reject buttons.
//
// When they exist: the run page already calls `approvalFor(event, runId)` for every event
// of the run and shows what it returns in its "Approvals" box (#run-approvals). Return an
// element for an approval request (what the tool wants to do, with approve and reject
// buttons that call the approval endpoint through api.js `call`), or null for any other
// event; the box stays hidden while nothing was returned.

/** The element to show for `event` in the run's approvals box, or null. */
export function approvalFor(_event, _runId) {
  return null;
}
