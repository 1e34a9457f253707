// Training: start a job from a named config (with overrides and a data set from the list), follow its metrics
// from the job's events stream as live loss curves (and validation bits per byte, which compares tokenizers, and
// the best head's induction score, which shows when an induction head forms), cancel or resume it, and serve a
// finished run as a model.

import {get, post, stream} from "./api.js";
import {lineChart} from "./draw.js";
import {table} from "./tables.js";

const $ = (id) => document.getElementById(id);
const RESUMABLE = ["interrupted", "cancelled", "failed"];
let app;
let jobs = [];
let job = null;  // the job followed
let follower = null;  // aborts the events stream followed
let curves = {train: [], val: [], bpb: [], induction: []};
let inductionHead = "";  // the head of the last induction score, "layer.head"

export function init(lab) {
  app = lab;
  $("tr-form").addEventListener("submit", (event) => {
    event.preventDefault();
    app.run(start);
  });
  $("tr-refresh").addEventListener("click", () => app.run(show));
  $("tr-jobs").addEventListener("click", (event) => {
    const row = event.target.closest("tr[data-index]");
    if (row) follow(jobs[Number(row.dataset.index)]);
  });
  $("tr-cancel").addEventListener("click", () => app.run(async () => {
    update(await post(`/v1/training/jobs/${job.id}/cancel`));
  }));
  $("tr-resume").addEventListener("click", () => app.run(async () => follow(await post(`/v1/training/jobs/${job.id}/resume`))));
  $("tr-serve").addEventListener("click", () => app.run(serve));
  drawChart();
}

export async function show() {
  drawChart();  // at the width the view has now
  const [datasets, listed] = await Promise.all([get("/v1/datasets"), get("/v1/training/jobs")]);
  const picked = $("tr-dataset").value;
  $("tr-dataset").replaceChildren(new Option("(the config's own data)", ""),
                                  ...datasets.data.map((m) => new Option(`${m.version} (${m.sources.map((s) => s.spec).join(", ")})`, m.version)));
  $("tr-dataset").value = datasets.data.some((m) => m.version === picked) ? picked :
    datasets.data.length ? datasets.data[datasets.data.length - 1].version : "";
  jobs = listed.data;
  table($("tr-jobs"), ["job", "run", "state", "config", "data set"],
        jobs.map((j) => [j.id, runName(j), j.state, typeof j.request.config === "string" ? j.request.config : "(inline)",
                         j.request.dataset]), "no training job yet");
}

function runName(j) {
  return j.workdir.split("/").filter((part) => part).pop();
}

async function start() {
  const overrides = $("tr-overrides").value.split("\n").map((line) => line.trim()).filter((line) => line);
  const body = {config: $("tr-config").value.trim(), overrides};
  if ($("tr-dataset").value) body.dataset = $("tr-dataset").value;
  if ($("tr-name").value.trim()) body.name = $("tr-name").value.trim();
  follow(await post("/v1/training/jobs", body));
  await show();
}

// Follows `followed`: its metrics rows from the start of the run as they are written, then its final state.
function follow(followed) {
  if (follower) follower.abort();
  follower = new AbortController();
  curves = {train: [], val: [], bpb: [], induction: []};
  update(followed);
  drawChart();
  const signal = follower.signal;
  app.run(() => stream("GET", `/v1/training/jobs/${followed.id}/events`, undefined, ({event, data}) => {
    if (event === "end") {
      update(data);
      app.run(show);
      return;
    }
    if ("loss" in data) curves.train.push([data.step, data.loss]);
    if ("val_loss" in data) curves.val.push([data.step, data.val_loss]);
    if ("val_bpb" in data) curves.bpb.push([data.step, data.val_bpb]);
    if ("val_induction" in data) {
      curves.induction.push([data.step, data.val_induction]);
      inductionHead = data.val_induction_head;
    }
    update({...job, step: data.step});
    drawChart();
  }, signal));
}

function update(followed) {
  job = followed;
  const running = job.state === "running";
  const status = $("tr-status");
  status.dataset.state = job.state;
  const last = curves.train.length ? `, loss ${curves.train[curves.train.length - 1][1].toFixed(4)}` : "";
  const val = (curves.val.length ? `, val_loss ${curves.val[curves.val.length - 1][1].toFixed(4)}` : "") +
    (curves.bpb.length ? `, val_bpb ${curves.bpb[curves.bpb.length - 1][1].toFixed(4)}` : "") +
    (curves.induction.length ?
      `, induction ${curves.induction[curves.induction.length - 1][1].toFixed(2)} (head ${inductionHead})` : "");
  status.textContent = `${job.id} (run ${runName(job)}): ${job.state}` +
    (job.step ? ` at step ${job.step}` : "") + last + val;
  $("tr-cancel").disabled = !running;
  $("tr-resume").disabled = !RESUMABLE.includes(job.state);
  $("tr-serve").disabled = running || job.state === "failed";
  $("tr-error").textContent = job.error || "";
  $("tr-error").hidden = !job.error;
}

function drawChart() {
  const canvas = $("tr-chart");
  canvas.dataset.trainPoints = String(curves.train.length);
  canvas.dataset.valPoints = String(curves.val.length);
  const width = Math.min(720, canvas.parentElement.clientWidth || 720);
  lineChart(canvas, [{name: "training loss", colour: "#1f77b4", points: curves.train},
                     {name: "validation loss", colour: "#ff7f0e", points: curves.val}],
            {width, height: 280, xLabel: "step", yLabel: "loss (nats per token)"});
  // bits per byte only where the run's tokenizer gives each token's bytes (not a Hugging Face one)
  const bpb = $("tr-bpb-chart");
  bpb.dataset.points = String(curves.bpb.length);
  $("tr-bpb").hidden = !curves.bpb.length;
  if (curves.bpb.length) {
    lineChart(bpb, [{name: "validation bits per byte", colour: "#2ca02c", points: curves.bpb}],
              {width, height: 200, xLabel: "step", yLabel: "bits per byte"});
  }
  // the best head's induction score, where the model is a decoder: it jumps when an induction head forms
  const induction = $("tr-induction-chart");
  induction.dataset.points = String(curves.induction.length);
  $("tr-induction").hidden = !curves.induction.length;
  if (curves.induction.length) {
    lineChart(induction, [{name: "induction score of the best head", colour: "#9467bd", points: curves.induction}],
              {width, height: 160, xLabel: "step", yLabel: "induction score"});
  }
}

// Serves the followed run as a model (answers once it is compiled) and opens it in the playground.
async function serve() {
  const id = runName(job);
  $("tr-serve").disabled = true;
  $("tr-status").textContent = `loading ${id} and compiling it…`;
  try {
    await post("/v1/models", {run_dir: job.workdir, id});
  } finally {
    update(job);
  }
  await app.refreshModels(id);
  app.go("playground");
}
