// Compare: two to four runs under the runs folder side by side (POST /v1/runs/compare): their loss curves overlaid
// by step, tokens seen or wall time (and validation bits per byte), their table, the settings that differ, and the
// same prompt traced through each (POST /v1/inspect): next-token predictions, one head's attention, head roles.

import {get, post} from "./api.js";
import {heatmap, lineChart, visible} from "./draw.js";
import {served} from "./models.js";
import {table} from "./tables.js";

const $ = (id) => document.getElementById(id);
const COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"];
const MAX_RUNS = 4;
const X_LABELS = {step: "step", tokens: "tokens seen", seconds: "wall time (minutes since the run's first row)"};
let app;
let runs = [];  // GET /v1/runs
let comparison = null;  // POST /v1/runs/compare

export function init(lab) {
  app = lab;
  app.compared = app.compared || [];  // the runs ticked (the Models view adds to it)
  $("cp-runs").addEventListener("change", (event) => {
    if (!event.target.matches("input[type=checkbox]")) return;
    const run = event.target.value;
    app.compared = event.target.checked ? [...app.compared, run] : app.compared.filter((r) => r !== run);
    app.run(compare);
  });
  $("cp-x").addEventListener("change", drawCurves);
  $("cp-form").addEventListener("submit", (event) => {
    event.preventDefault();
    app.run(inspectEach);
  });
}

export async function show() {
  runs = (await get("/v1/runs")).data;
  app.compared = app.compared.filter((run) => runs.some((r) => r.run === run));
  await compare();  // draws the list too
}

function drawRunList() {
  const full = app.compared.length >= MAX_RUNS;
  table($("cp-runs"), ["compare", "run", "architecture", "positions", "parameters", "steps", "best val loss", "data"],
        runs.map((r) => {
          const box = document.createElement("input");
          box.type = "checkbox";
          box.value = r.run;
          box.checked = app.compared.includes(r.run);
          box.disabled = Boolean(r.error) || (full && !box.checked);
          box.setAttribute("aria-label", `compare ${r.run}`);
          return [box, r.run, r.architecture ?? r.error, r.positional, r.params?.toLocaleString(), r.steps,
                  r.best_val_loss?.toFixed(4), r.data];
        }), "no run under the server's runs folder yet: train one in the Training view");
}

async function compare() {
  drawRunList();
  const picked = app.compared;
  $("cp-status").textContent = picked.length < 2 ? `Tick ${2 - picked.length} more run${picked.length ? "" : "s"}.` :
    `Comparing ${picked.join(", ")}.`;
  if (picked.length < 2) {
    comparison = null;
    $("cp-result").hidden = true;
    return;
  }
  comparison = await post("/v1/runs/compare", {runs: picked});
  $("cp-result").hidden = false;
  drawCurves();
  table($("cp-table"), ["run", "architecture", "parameters", "data", "steps", "tokens seen", "tokens/s",
                        "best val loss (step)", "best val bits per byte"],
        comparison.runs.map((r) => [swatch(r.run), r.architecture, r.params.toLocaleString(), r.data, r.steps,
                                    r.tokens_seen.toLocaleString(), r.tokens_per_sec?.toFixed(0),
                                    r.best_val_loss === undefined ? null : `${r.best_val_loss.toFixed(4)} (${r.best_val_step})`,
                                    r.best_val_bpb?.toFixed(4)]), "");
  table($("cp-diff"), ["setting", ...comparison.runs.map((r) => swatch(r.run))],
        comparison.config_diff.map((d) => [d.key, ...d.values.map(setting)]),
        "none: the runs' configs are the same");
  $("cp-diff").dataset.rows = String(comparison.config_diff.length);
}

function swatch(run) {
  const span = document.createElement("span");
  span.className = "swatch";
  span.style.borderColor = COLOURS[app.compared.indexOf(run) % COLOURS.length];
  span.textContent = run;
  return span;
}

function setting(value) {
  return value === null || value === undefined ? "—" : typeof value === "object" ? JSON.stringify(value) : String(value);
}

function drawCurves() {
  if (!comparison) return;
  const x = $("cp-x").value;
  const at = (row) => (x === "seconds" ? (row.seconds === null ? null : row.seconds / 60) : row[x]);
  const series = (key, rows, colour, name, thin) => ({
    name, colour, width: thin ? 1 : 2, dots: !thin,
    points: rows.filter((row) => key in row && at(row) !== null).map((row) => [at(row), row[key]]),
  });
  const loss = [];
  const bpb = [];
  comparison.curves.forEach((curve, i) => {
    const colour = COLOURS[i % COLOURS.length];
    loss.push(series("loss", curve.train, colour, `${curve.run} train`, true),
              series("val_loss", curve.evals, colour, `${curve.run} val`, false));
    bpb.push(series("val_bpb", curve.evals, colour, curve.run, false));
  });
  const width = Math.min(860, $("cp-loss").parentElement.clientWidth || 860);
  const drawn = loss.filter((s) => s.points.length);
  lineChart($("cp-loss"), drawn, {width, height: 300, xLabel: X_LABELS[x], yLabel: "loss (nats per token)"});
  $("cp-loss").dataset.runs = String(new Set(drawn.map((s) => s.name.split(" ")[0])).size);
  $("cp-loss").dataset.points = String(drawn.reduce((n, s) => n + s.points.length, 0));
  const withBpb = bpb.filter((s) => s.points.length);
  $("cp-bpb-panel").hidden = !withBpb.length;
  $("cp-bpb").dataset.runs = String(withBpb.length);
  if (withBpb.length) {
    lineChart($("cp-bpb"), withBpb, {width, height: 220, xLabel: X_LABELS[x], yLabel: "val bits per byte"});
  }
}

// Serves each compared run that no model serves yet, then traces the prompt through each, drawn in columns.
async function inspectEach() {
  const prompt = $("cp-prompt").value;
  const layer = Number($("cp-layer").value);
  const head = Number($("cp-head").value);
  const column = $("cp-inspect");
  column.replaceChildren();
  for (const [i, summary] of comparison.runs.entries()) {
    const model = await served(summary, $("cp-status"));
    const trace = await post("/v1/inspect", {model, prompt, include: ["tokens", "attention", "heads"], top_k: 5});
    column.append(traceColumn(summary.run, model, trace, layer, head, COLOURS[i % COLOURS.length]));
  }
  $("cp-status").textContent = `Traced the prompt through ${comparison.runs.length} runs.`;
  await app.refreshModels();
}

function traceColumn(run, model, trace, layer, head, colour) {
  const box = document.createElement("div");
  box.className = "column";
  box.dataset.run = run;
  box.style.borderTopColor = colour;
  const title = document.createElement("h3");
  title.textContent = `${run} (model ${model})`;
  const known = trace.tokens.slice(1).filter((t) => t.logprob !== null);
  const loss = known.length ? -known.reduce((sum, t) => sum + t.logprob, 0) / known.length : null;
  const summary = document.createElement("p");
  summary.className = "status";
  summary.textContent = `${trace.tokens.length} tokens; mean loss on the prompt ${loss === null ? "—" : loss.toFixed(3)} nats`;
  const next = document.createElement("table");
  table(next, ["next token", "probability"], trace.next.map((t) => [visible(t.text), Math.exp(t.logprob).toFixed(3)]), "");
  box.dataset.next = trace.next.map((t) => t.id).join(",");
  const heading = document.createElement("h4");
  const canvas = document.createElement("canvas");
  canvas.className = "cp-attention";
  if (layer < trace.num_layers && head < trace.num_heads) {
    heading.textContent = `attention of layer ${layer}, head ${head}`;
    const labels = trace.tokens.map((t) => visible(t.text));
    heatmap(canvas, trace.attention[layer][head], {rowLabels: labels, colLabels: labels,
                                                   cell: Math.max(3, Math.min(16, Math.floor(300 / labels.length)))});
    canvas.dataset.layer = String(layer);
  } else {
    heading.textContent = `no layer ${layer}, head ${head}: this model has ${trace.num_layers} layers of ${trace.num_heads} heads`;
  }
  const roles = document.createElement("table");
  table(roles, ["layer", "head", "previous-token", "induction", "entropy"],
        trace.heads.map((h) => [h.layer, h.head, h.previous_token.toFixed(2), h.induction.toFixed(2), h.entropy.toFixed(2)]), "");
  const scroll = (element) => {
    const div = document.createElement("div");
    div.className = "scroll";
    div.append(element);
    return div;
  };
  box.append(title, summary, next, heading, scroll(canvas), scroll(roles));
  return box;
}
