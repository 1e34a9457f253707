// The sampling explorer: one position's whole next-token distribution as bars, reshaped in the page (sampling.js,
// the server's own rules) as the learner moves temperature, top-k, top-p, min-p and the repetition penalty. The
// logits come once with the walkthrough's activations: moving a control sends no request.

import {asCurl} from "./api.js";
import {visible} from "./draw.js";
import {choose, largest} from "./sampling.js";

const $ = (id) => document.getElementById(id);
const SHOWN = 30;  // bars
// control -> [setting, default]
const CONTROLS = {"sx-temperature": ["temperature", 1], "sx-top-k": ["topK", 0], "sx-top-p": ["topP", 1],
                  "sx-min-p": ["minP", 0], "sx-repetition": ["repetition", 1]};
let current = null;  // {logits, seen, seenText, vocab, labels, request, heading}

export function init() {
  for (const id of Object.keys(CONTROLS)) {
    // each control is a slider and a number field kept equal; either reshapes the bars at once
    for (const field of [$(id), $(`${id}-n`)]) {
      field.addEventListener("input", () => {
        const other = field.id === id ? $(`${id}-n`) : $(id);
        if (field.value !== "" && Number.isFinite(Number(field.value))) other.value = field.value;
        update();
      });
    }
  }
  $("sx-reset").addEventListener("click", () => {
    for (const [id, [, value]] of Object.entries(CONTROLS)) $(id).value = $(`${id}-n`).value = String(value);
    update();
  });
}

// The settings, each held to its number field's min and max: the server's ranges (index.html; test_api checks them
// against mulm_jax.infer.sampling.LIMITS), so that the page shows no choice the server would refuse.
function settings() {
  const read = (id, fallback) => {
    const field = $(`${id}-n`), value = Number(field.value);
    if (field.value.trim() === "" || !Number.isFinite(value)) return fallback;
    const low = field.min === "" ? -Infinity : Number(field.min), high = field.max === "" ? Infinity : Number(field.max);
    return Math.min(high, Math.max(low, value));
  };
  return {temperature: read("sx-temperature", 1), topK: Math.round(read("sx-top-k", 0)), topP: read("sx-top-p", 1),
          minP: read("sx-min-p", 0), repetition: read("sx-repetition", 1)};
}

// Shows the distribution of `logits` (the model's, [V]) at one position. `seen`: the ids the repetition penalty
// applies to (the prompt's tokens up to the position); `vocab`: the tokenizer's size (ids from it on are masked);
// `labels`: a Map id -> text (filled in as it arrives: call relabel()); `prompt`: the ids a completion request
// would send for this position (null: none can, as for an encoder-decoder's later decoder positions).
export function show({logits, seen, seenText, vocab, labels, prompt, model, heading, ablated = false}) {
  current = {logits, seen, seenText, vocab, labels, prompt, model, heading, ablated,
             candidates: candidates(logits, seen, vocab)};
  $("sx-top-k").max = String(Math.min(vocab, 100));  // the field takes any k up to the vocabulary
  $("sx-top-k-n").max = String(vocab);
  $("sx-heading").textContent = heading;
  $("sx-seen").textContent = seenText;
  update();
}

export function relabel() {
  if (current) update();
}

// The ids that can be among the SHOWN likeliest whatever the settings: temperature and the filters keep the
// order, and the repetition penalty moves only the `seen` ids.
export function candidates(logits, seen, vocab) {
  return [...new Set([...largest(logits, SHOWN + seen.size, vocab), ...[...seen].filter((i) => i < vocab)])];
}

function label(id) {
  const text = current.labels.get(id);
  return text === undefined ? `#${id}` : visible(text);
}

function percent(p) {
  return p >= 0.001 || p === 0 ? `${(100 * p).toFixed(1)}%` : `${(100 * p).toExponential(1)}%`;
}

function update() {
  if (!current) return;
  const s = settings();
  const choice = choose(current.logits, s, current.seen, current.vocab);
  const order = current.candidates.slice().sort((a, b) => choice.scaled[b] - choice.scaled[a] || a - b).slice(0, SHOWN);
  const kept = new Set(choice.kept);
  const largest = Math.max(...order.map((i) => Math.max(choice.probs[i], Math.exp(choice.model[i]))));
  $("sx-bars").replaceChildren(...order.map((id, rank) => {
    const item = document.createElement("li");
    const removed = choice.removedBy(id);
    const model = Math.exp(choice.model[id]);
    item.dataset.id = String(id);
    item.dataset.prob = String(choice.probs[id]);
    item.dataset.modelProb = String(model);
    if (removed) item.dataset.removed = removed;
    if (current.seen.has(id) && s.repetition !== 1) item.classList.add("penalised");
    const name = document.createElement("code");
    name.textContent = label(id);
    name.title = `id ${id}`;
    const bars = document.createElement("span");
    bars.className = "bars";
    const before = document.createElement("span");
    before.className = "model";
    before.style.width = `${(100 * model) / largest}%`;
    const after = document.createElement("span");
    after.className = "sampled";
    after.style.width = `${(100 * choice.probs[id]) / largest}%`;
    bars.append(before, after);
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = removed ? `${removed}` : percent(choice.probs[id]);
    value.title = `model ${percent(model)}; sampled from ${percent(choice.probs[id])}`;
    item.title = `rank ${rank + 1}, id ${id}: the model gives ${percent(model)}` +
      (removed ? `; removed by ${removed}` : `; drawn with ${percent(choice.probs[id])}`);
    item.append(name, bars, value);
    return item;
  }));
  const keptMass = choice.kept.reduce((sum, i) => sum + Math.exp(choice.model[i]), 0);
  $("sx-summary").textContent = choice.greedy ?
    `temperature 0: greedy, always “${label(choice.kept[0])}” (the penalised logits' largest)` :
    `${choice.kept.length} of ${current.vocab} tokens can be drawn, ${percent(keptMass)} of the model's ` +
    `probability; the bars show the ${order.length} likeliest after the penalty.`;
  const panel = $("wt-sampling");
  panel.dataset.kept = JSON.stringify(choice.kept);
  panel.dataset.keptCount = String(choice.kept.length);
  const request = current.prompt === null ? null : {
    model: current.model, prompt: current.prompt, max_tokens: 1, temperature: s.temperature, top_k: s.topK,
    top_p: s.topP, min_p: s.minP, repetition_penalty: s.repetition, logprobs: 5, seed: 0};
  $("sx-curl").textContent = request ? (current.ablated ? "# The server samples from the whole model: these " +
    "tokens come without the ablated heads.\n" : "") + asCurl("POST", "/v1/completions", request) :
    "The server's completions start an encoder-decoder's decoder from one token: only position 0 can be drawn.";
  window.__mulmSampling = {
    kept: choice.kept, settings: s, vocab: current.vocab, request,
    modelLogprob: (id) => choice.model[id], prob: (id) => choice.probs[id], removedBy: (id) => choice.removedBy(id),
  };
}
