// Data sets: the assembled versions with their manifests (GET /v1/datasets), a pairs data set's first examples with
// their loss mask (GET /v1/datasets/{version}/examples/train), and a form that assembles a new one as a job
// (POST /v1/datasets), followed until it succeeds or fails.

import {get, post} from "./api.js";
import {visible} from "./draw.js";
import {table} from "./tables.js";

const $ = (id) => document.getElementById(id);
const POLL_MS = 500;
let app;
let manifests = [];

export function init(lab) {
  app = lab;
  $("ds-refresh").addEventListener("click", () => app.run(show));
  $("ds-form").addEventListener("submit", (event) => {
    event.preventDefault();
    app.run(assemble);
  });
  $("ds-list").addEventListener("click", (event) => {
    const row = event.target.closest("tr[data-index]");
    if (!row) return;
    const manifest = manifests[Number(row.dataset.index)];
    $("ds-manifest").textContent = JSON.stringify(manifest, null, 2);
    $("ds-manifest").hidden = false;
    app.run(() => showExamples(manifest));
  });
}

export async function show() {
  manifests = (await get("/v1/datasets")).data;
  table($("ds-list"), ["version", "sources", "tokenizer", "vocabulary", "train tokens", "val tokens"],
        manifests.map((m) => [m.version, m.sources.map((s) => s.spec).join(", "), m.tokenizer.kind, m.vocab_size,
                              m.train_tokens.toLocaleString(), m.val_tokens.toLocaleString()]),
        "no data set assembled yet");
  return manifests;
}

// A pairs data set's first training examples, each token shown, those the loss mask marks highlighted.
async function showExamples(manifest) {
  const pairs = (manifest.kind || "text") !== "text";
  $("ds-examples").hidden = !pairs;
  if (!pairs) return;
  const eos = manifest.tokenizer.eos_id;
  const examples = (await get(`/v1/datasets/${manifest.version}/examples/train`)).data;
  $("ds-examples-list").replaceChildren(...examples.map((example) => {
    const line = document.createElement("div");
    line.className = "example";
    const where = document.createElement("span");
    where.className = "where";
    where.textContent = `${example.file}:${example.line}`;
    line.append(where, ...example.tokens.map((token) => {
      const span = document.createElement("span");
      span.className = token.loss ? "trained" : "read";
      span.textContent = token.id === eos ? "⟨eos⟩" : visible(token.text);
      span.title = `id ${token.id}, ${token.loss ? "trained on (loss mask 1)" : "read only (loss mask 0)"}`;
      return span;
    }));
    return line;
  }));
}

function optional(id) {
  const value = $(id).value.trim();
  return value === "" ? undefined : $(id).type === "number" ? Number(value) : value;
}

async function assemble() {
  $("ds-error").hidden = true;
  const body = {
    source: $("ds-source").value.split(",").map((s) => s.trim()).filter((s) => s),
    tokenizer: optional("ds-tokenizer"), vocab_size: optional("ds-vocab"), dedup: optional("ds-dedup"),
    seq_len: optional("ds-seq-len"),
  };
  let job = await post("/v1/datasets", body);
  $("ds-run").disabled = true;
  try {
    while (job.state === "running") {
      $("ds-job").textContent = `job ${job.id}: assembling… (${Math.round(Date.now() / 1000 - job.created)} s)`;
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
      job = await get(`/v1/datasets/jobs/${job.id}`);
    }
  } finally {
    $("ds-run").disabled = false;
  }
  $("ds-job").dataset.state = job.state;
  if (job.state === "succeeded") {
    $("ds-job").textContent = `job ${job.id} succeeded: version ${job.result.version}`;
    await show();
  } else {
    $("ds-job").textContent = `job ${job.id} ${job.state}`;
    $("ds-error").textContent = job.error || "";
    $("ds-error").hidden = !job.error;
  }
}
