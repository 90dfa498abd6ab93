// The console's shell: the key form, the hash router and the start form. Each page is a
// function that fills `view` and may return a cleanup (a run page stops its stream).
import { call, el, forgetKey, getKey, problemText, setKey } from "./api.js";
import { fleetPage } from "./fleet.js";
import { runPage } from "./run.js";
import { runsPage } from "./runs.js";
import { threadPage } from "./thread.js";
import { versionsPage } from "./versions.js";

const view = document.getElementById("view");
let cleanup = null;
let current = 0;  // the route being shown: a page that finished loading after a newer one stops

function showKeyState() {
  document.getElementById("key-state").textContent = getKey() ? "key set (this tab only)" : "no key";
}

document.getElementById("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = document.getElementById("key");
  if (input.value.trim()) setKey(input.value.trim());
  input.value = "";  // the key stays in sessionStorage only, not in the page
  showKeyState();
  route();
});
document.getElementById("key-forget").addEventListener("click", () => {
  forgetKey();
  showKeyState();
  route();
});

async function startPage(root) {
  root.append(el("h2", "Start a run"));
  const form = el("form", null, { class: "stack", id: "start-form" });
  const agent = el("select", null, { id: "start-agent", name: "agent" });
  const input = el("textarea", null, { id: "start-input", name: "input", required: "" });
  const submit = el("button", "Start", { type: "submit", id: "start-submit" });
  const message = el("div", null, { id: "start-message" });
  form.append(el("label", "Agent", { for: "start-agent" }), agent,
    el("label", "Input", { for: "start-input" }), input, submit);
  root.append(form, message);
  const agents = await call("GET", "/v1/agents");
  if (!agents.ok) {
    message.replaceChildren(el("p", problemText(agents), { class: "error" }));
    return;
  }
  for (const item of agents.data.agents) agent.append(el("option", item.name, { value: item.name }));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    submit.disabled = true;
    const path = `/v1/agents/${encodeURIComponent(agent.value)}/runs`;
    const started = await call("POST", path, { input: input.value });
    submit.disabled = false;
    if (started.status === 202) {
      location.hash = `#/runs/${encodeURIComponent(started.data.run_id)}`;
    } else {
      message.replaceChildren(el("p", `Refused: ${problemText(started)}`, { class: "error", id: "start-error" }));
    }
  });
}

const routes = [
  [/^#\/runs\/([^/]+)$/, (root, match) => runPage(root, decodeURIComponent(match[1]))],
  [/^#\/start$/, (root) => startPage(root)],
  [/^#\/threads\/([^/]+)$/, (root, match) => threadPage(root, decodeURIComponent(match[1]))],
  [/^#\/versions$/, (root) => versionsPage(root)],
  [/^#\/fleet$/, (root) => fleetPage(root)],
  [/^(?:#\/runs)?(?:\?(.*))?$/, (root, match) => runsPage(root, new URLSearchParams(match[1] || ""))],
];

function route() {
  if (cleanup) cleanup();
  cleanup = null;
  current++;
  view.replaceChildren();
  const root = el("section");
  view.append(root);
  if (!getKey()) root.append(el("p", "Enter an API key above: the console sees what that key may see.", { class: "notice" }));
  for (const [pattern, page] of routes) {
    const match = location.hash.match(pattern);
    if (match) {
      const token = ++current;
      Promise.resolve(page(root, match)).then((stop) => {
        if (typeof stop !== "function") return;
        if (token === current) cleanup = stop;
        else stop();
      });
      return;
    }
  }
  root.append(el("p", "No such page.", { class: "error" }));
}

window.addEventListener("hashchange", route);
showKeyState();
route();
