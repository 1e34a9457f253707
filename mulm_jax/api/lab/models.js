// Models: the served models (context length, parameters, step, run folder), every run under the runs folder (to
// serve, inspect or compare with one click), and a form that serves a run by its folder.

import {get, post} from "./api.js";
import {table} from "./tables.js";

const $ = (id) => document.getElementById(id);
let app;
let runs = [];

export function init(lab) {
  app = lab;
  $("md-list").addEventListener("click", (event) => {
    const row = event.target.closest("tr[data-index]");
    if (!row) return;
    const id = app.models[Number(row.dataset.index)].id;
    app.run(() => app.refreshModels(id)).then(() => app.go("playground"));
  });
  $("md-runs").addEventListener("click", (event) => {
    const button = event.target.closest("button[data-action]");
    if (!button) return;
    const run = runs[Number(button.closest("tr[data-index]").dataset.index)];
    app.run(() => ACTIONS[button.dataset.action](run));
  });
  $("md-form").addEventListener("submit", (event) => {
    event.preventDefault();
    app.run(load);
  });
}

export async function show() {
  const [models, listed] = await Promise.all([app.refreshModels(),
                                              app.may("inspect", "train") ? get("/v1/runs") : {data: []}]);
  table($("md-list"), ["model", "architecture", "context", "parameters", "vocabulary", "step", "run folder"],
        models.map((m) => [m.id, m.architecture, m.context_length, m.parameters.toLocaleString(), m.vocab_size,
                           m.step, m.run_dir]),
        "no model served: serve a run below, or from a finished training job");
  runs = listed.data;
  table($("md-runs"), ["run", "architecture", "positions", "parameters", "steps", "best val loss", "data", "served as", ""],
        runs.map((r) => [r.run, r.architecture ?? r.error, r.positional, r.params?.toLocaleString(), r.steps,
                         r.best_val_loss?.toFixed(4), r.data, r.served_as.join(", "), actions(r)]),
        "no run under the server's runs folder yet: train one in the Training view");
}

function actions(run) {
  const span = document.createElement("span");
  span.className = "actions";
  const servable = !run.error && run.checkpoints.length > 0;
  const shown = [["serve", "Serve", servable, app.may("admin", "train")],
                 ["inspect", "Inspect", servable, app.may("admin", "train") && app.may("inspect")],
                 ["compare", app.compared?.includes(run.run) ? "Compared" : "Compare", !run.error, app.may("inspect")]];
  for (const [action, text, enabled] of shown.filter((entry) => entry[3])) {
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.action = action;
    button.textContent = text;
    button.disabled = !enabled;
    if (!servable && action !== "compare") button.title = run.error || "no checkpoint yet";
    span.append(button);
  }
  return span;
}

// The id of a model serving `run` (a GET /v1/runs row): one already serving it, else it is served now (its newest
// checkpoint, as the run folder's path with "-" for "/"), saying so in `status` meanwhile.
export async function served(run, status = $("md-status")) {
  if (run.served_as.length) return run.served_as[0];
  status.textContent = `loading ${run.run} and compiling it…`;
  try {
    run.served_as = [(await post("/v1/models", {run_dir: run.run, id: run.run.replaceAll("/", "-")})).id];
    return run.served_as[0];
  } finally {
    status.textContent = "";
  }
}

const ACTIONS = {
  async serve(run) {
    await app.refreshModels(await served(run));
    app.go("playground");
  },
  async inspect(run) {
    await app.refreshModels(await served(run));
    app.go("inspect");
  },
  async compare(run) {
    app.compared = [...(app.compared || []).filter((r) => r !== run.run), run.run].slice(-4);
    app.go("compare");
  },
};

async function load() {
  const body = {run_dir: $("md-run").value.trim()};
  if ($("md-id").value.trim()) body.id = $("md-id").value.trim();
  if ($("md-step").value.trim()) body.step = Number($("md-step").value);
  $("md-status").textContent = `loading ${body.run_dir} and compiling it…`;
  try {
    const served = await post("/v1/models", body);
    $("md-status").textContent = `serving ${served.id} (step ${served.step})`;
  } catch (error) {
    $("md-status").textContent = "";
    throw error;
  }
  await show();
}
