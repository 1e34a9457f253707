// Models: the served models (context length, parameters, step, run folder), and a form that serves another run.

import {post} from "./api.js";
import {table} from "./tables.js";

const $ = (id) => document.getElementById(id);
let app;

export function init(lab) {
  app = lab;
  $("md-list").addEventListener("click", (event) => {
    const row = event.target.closest("tr[data-index]");
    if (!row) return;
    const id = app.models[Number(row.dataset.index)].id;
    app.run(() => app.refreshModels(id)).then(() => app.go("playground"));
  });
  $("md-form").addEventListener("submit", (event) => {
    event.preventDefault();
    app.run(load);
  });
}

export async function show() {
  const models = await app.refreshModels();
  table($("md-list"), ["model", "architecture", "context", "parameters", "vocabulary", "step", "run folder"],
        models.map((m) => [m.id, m.architecture, m.context_length, m.parameters.toLocaleString(), m.vocab_size,
                           m.step, m.run_dir]),
        "no model served: serve a run below, or from a finished training job");
}

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
