// Walkthrough: one token followed through every step of the model, top to bottom, with each step's equation, its
// shape in the project's letters, the numbers the model computed there (POST /v1/inspect/activations at that
// position) and the function that computes it; a head ablated with a click; and the sampling explorer over the
// position's next-token distribution (explorer.js).

import {asCurl, post} from "./api.js";
import {cellAt, matrix, strip, stripIndex, tokenRow, visible} from "./draw.js";
import * as explorer from "./explorer.js";
import {largest, logSoftmax, maskVocab} from "./sampling.js";
import {onTokenPick, tokenElement} from "./tokens.js";

const $ = (id) => document.getElementById(id);
const TOP = 10;  // tokens listed in the logits and probabilities steps
const NEURONS = 8;  // most active MLP neurons listed
const LABEL_REQUESTS = 6;  // detokenize requests in flight at once
const CODE = {
  embed: "mulm_jax/nn/embedding.py · Embedder.embed",
  learned: "mulm_jax/nn/embedding.py · Embedder.embed → mulm_jax/nn/positional.py · LearnedPositionalEmbedding",
  sinusoidal: "mulm_jax/nn/embedding.py · Embedder.embed → mulm_jax/nn/positional.py · sinusoidal_table",
  block: "mulm_jax/nn/blocks.py · Block.__call__",
  norm: "mulm_jax/nn/blocks.py · Norm",
  projections: "mulm_jax/nn/attention.py · Attention.__call__",
  rope: "mulm_jax/nn/positional.py · apply_rope",
  attention: "mulm_jax/nn/attention.py · dot_product_attention",
  mask: "mulm_jax/models/masks.py · self_attention_inputs → mulm_jax/nn/attention.py · attention_mask",
  mlp: "mulm_jax/nn/feedforward.py · FeedForward",
  logits: "mulm_jax/nn/embedding.py · Embedder.logits",
  probs: "mulm_jax/infer/sampling.py · mask_vocab, token_logprobs",
};
let app;
let state = null;
let latest = 0;  // the newest load: older answers are dropped

export function init(lab) {
  app = lab;
  explorer.init();
  $("wt-form").addEventListener("submit", (event) => {
    event.preventDefault();
    app.run(inspect);
  });
  onTokenPick($("wt-tokens"), (info) => app.run(() => follow(info.position)));
  $("wt-layer").addEventListener("change", () => state && openLayer(Number($("wt-layer").value)));
  $("wt-head").addEventListener("change", () => {
    if (!state) return;
    state.head = Number($("wt-head").value);
    renderLayer(state.layer);
  });
  $("wt-steps").addEventListener("click", (event) => {
    const button = event.target.closest("button[data-ablate]");
    if (button) app.run(() => toggleAblation(button.dataset.ablate));
  });
  $("wt-ablated").addEventListener("click", (event) => {
    const button = event.target.closest("button[data-ablate]");
    if (button) app.run(() => toggleAblation(button.dataset.ablate));
  });
  let resizing = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizing);
    resizing = setTimeout(() => {
      if (state && state.data && !$("wt-result").hidden) paintSteps();
    }, 150);
  });
  $("model").addEventListener("change", () => {
    state = null;
    $("wt-result").hidden = true;
    fitForm();
  });
}

export function show() {
  fitForm();
}

function card() {
  return app.models.find((m) => m.id === app.model());
}

function encoderDecoder() {
  const model = card();
  return Boolean(model && model.architecture === "encoder_decoder");
}

function fitForm() {
  const encdec = encoderDecoder();
  $("wt-target-field").hidden = !encdec;
  $("wt-prompt-label").textContent = encdec ? "Source (what the encoder reads)" : "Prompt";
}

// ---- requests ------------------------------------------------------------------------------------------------

function body(position, ablated, names) {
  const out = {model: state.model, prompt: state.prompt};
  if (state.target) out.target = state.target;
  if (names) out.names = names;
  if (position !== null) out.position = position;
  if (ablated.length) {
    out.ablate = ablated.map((key) => ({layer: Number(key.split(":")[0]), head: Number(key.split(":")[1])}));
  }
  return out;
}

function ablatedList() {
  return [...state.ablated].sort();
}

// Loads the activations at `position` (null: the last token), with the ablated heads, and the same without them
// when some are ablated (for the prediction they change).
async function load(position) {
  const mine = ++latest;
  const ablated = ablatedList();
  const sameBase = state.base && position === state.position;
  const [data, base] = await Promise.all([
    post("/v1/inspect/activations", body(position === null ? -1 : position, ablated)),
    ablated.length && !sameBase ? post("/v1/inspect/activations", body(position === null ? -1 : position, [])) : null,
  ]);
  if (mine !== latest) return false;
  state.data = data;
  state.base = ablated.length ? (base || state.base) : data;
  state.position = data.position;
  // Ids from the tokenizer's size on are padded rows the server never draws (sampling.mask_vocab).
  state.vocab = Math.min((card() || {}).tokenizer_vocab_size || Infinity, data.activations.logits.values.length);
  $("wt-curl").textContent = asCurl("POST", "/v1/inspect/activations", body(state.position, ablated));
  return true;
}

async function inspect() {
  const started = performance.now();
  const target = $("wt-target").value;
  state = {model: app.model(), prompt: $("wt-prompt").value, target: encoderDecoder() && target ? target : null,
           layer: Number($("wt-layer").value) || 0, head: Number($("wt-head").value) || 0, ablated: new Set(),
           kv: new Map(), labels: new Map(), base: null, position: null};
  $("wt-steps").dataset.state = "loading";
  if (!(await load(null))) return;
  paint();
  await new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve, 0)));
  $("wt-steps").dataset.paintMs = String(Math.round(performance.now() - started));
}

async function follow(position) {
  if (!state || position === state.position) return;
  state.base = null;
  $("wt-steps").dataset.state = "loading";
  if (await load(position)) paint();
}

async function toggleAblation(key) {
  if (state.ablated.has(key)) state.ablated.delete(key);
  else state.ablated.add(key);
  state.kv.clear();  // later layers' keys and values change with the ablation
  $("wt-steps").dataset.state = "loading";
  if (await load(state.position)) paint();
}

// Each piece's text as it reads after the prompt's first token (a SentencePiece word start keeps its space).
async function fetchLabels(ids) {
  const current = state;
  const anchor = current.data.tokens[0].id;
  const {labels, model} = current;
  const missing = [...new Set(ids)].filter((id) => !labels.has(id));
  if (!missing.length) return;
  if (current.anchor === undefined) current.anchor = (await post("/v1/detokenize", {model, tokens: [anchor]})).prompt;
  const prefix = current.anchor;
  const queue = missing.slice();
  await Promise.all(Array.from({length: LABEL_REQUESTS}, async () => {
    while (queue.length) {
      const id = queue.shift();
      const text = (await post("/v1/detokenize", {model, tokens: [anchor, id]})).prompt;
      labels.set(id, text.startsWith(prefix) ? text.slice(prefix.length) : text);
    }
  }));
}

// Keys and values of every token for one layer (the walkthrough's own activations hold only the followed token's).
async function fetchKeys(layer) {
  const {kv, data} = state;
  const key = `${layer}`;
  if (kv.has(key)) return;
  kv.set(key, null);
  const names = ["k", "v", "rot_k"].map((n) => `blocks.${layer}.attn.${n}`).filter((n) => n in data.names);
  const answer = await post("/v1/inspect/activations", body(null, ablatedList(), names));
  if (kv.get(key) === null) kv.set(key, answer.activations);  // not cleared meanwhile by an ablation
}

// ---- reading the activations -------------------------------------------------------------------------------

function act(name) {
  const entry = state.data.activations[name];
  return entry ? entry.values : null;
}

function kvHead() {
  return Math.floor(state.head / (state.data.num_heads / state.data.num_kv_heads));
}

function tokens() {
  return state.data.tokens.map((t) => visible(t.text));
}

function sourceTokens() {
  return (state.data.source_tokens || []).map((t) => visible(t.text));
}

function add(a, b) {
  return a.map((x, i) => x + b[i]);
}

function norm(values) {
  return Math.sqrt(values.reduce((sum, v) => sum + (v || 0) * (v || 0), 0));
}

function largestDifference(a, b) {
  let largest = 0;
  a.forEach((x, i) => {
    largest = Math.max(largest, Math.abs(x - b[i]));
  });
  return largest;
}

// The smallest and largest of values (a loop: a vocabulary's logits are too many arguments for Math.min).
function range(values) {
  let [low, high] = [Infinity, -Infinity];
  for (const v of values) {
    if (v === null) continue;
    low = Math.min(low, v);
    high = Math.max(high, v);
  }
  return [low, high];
}

function fmt(value) {
  if (value === null || value === undefined) return "—";
  if (value === -Infinity) return "−∞";
  const a = Math.abs(value);
  return a !== 0 && (a >= 1e4 || a < 1e-3) ? value.toExponential(3) : value.toFixed(4);
}

function percent(p) {
  return p >= 0.001 || p === 0 ? `${(100 * p).toFixed(1)}%` : `${(100 * p).toExponential(1)}%`;
}

function label(id) {
  const text = state.labels.get(id);
  return text === undefined ? `#${id}` : visible(text);
}

// The shape of `name` in the model's letters, at the followed token, and of the part shown.
function shape(name, part) {
  const whole = state.data.names[name];
  const entry = state.data.activations[name];
  const here = entry.letters === whole ? whole : `${whole} → at position ${state.position}: ${entry.letters}`;
  return `${name}: ${here} [${entry.shape.join(", ")}]${part ? `; ${part}` : ""}`;
}

// ---- building blocks of a step -----------------------------------------------------------------------------

function el(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = text;
  return e;
}

function step({key, title, equation, shapes = [], code, parts = []}) {
  const item = el("li", "step");
  item.dataset.step = key;
  item.append(el("h3", null, title));
  for (const line of [].concat(equation)) item.append(el("p", "eq", line));
  const meta = el("div", "meta");
  for (const text of shapes) meta.append(el("span", "shape", text));
  meta.append(el("code", "fn", code));
  item.append(meta, ...parts.filter((p) => p));
  return item;
}

function width() {
  return Math.max(200, Math.min(760, $("wt-result").clientWidth - 56));
}

// A vector as a strip of cells (the numbers in data-values, each on hover).
function vector(name, caption, values, {index = null, signed = true} = {}) {
  const figure = el("figure", "vec");
  figure.dataset.name = name;
  if (index !== null) figure.dataset.index = String(index);
  figure.dataset.values = JSON.stringify(values);
  const top = el("figcaption");
  top.append(el("span", "what", caption), el("span", "dims", ` [${values.length}]`),
             el("span", "dims", ` ‖·‖ = ${fmt(norm(values))}`));
  const canvas = el("canvas");
  canvas.setAttribute("role", "img");
  const scroll = el("div", "scroll");
  scroll.append(canvas);
  const [low, high] = range(values);
  canvas.setAttribute("aria-label", `${caption}: ${values.length} values from ${fmt(low)} to ${fmt(high)}`);
  const hover = el("output", "hover", "hover for values");
  figure.append(top, scroll, hover);
  const geometry = strip(canvas, values, {width: width(), signed});
  canvas.addEventListener("mousemove", (event) => {
    const under = stripIndex(geometry, canvas, event);
    if (!under) return;
    const [first, last] = under;
    hover.textContent = first === last ? `${caption}[${first}] = ${fmt(values[first])}` :
      `${caption}[${first}…${last}]: largest ${fmt(values.slice(first, last + 1).reduce(
        (a, b) => (Math.abs(b) > Math.abs(a) ? b : a)))}`;
  });
  return figure;
}

function scalar(name, caption, value) {
  const figure = el("figure", "vec scalar");
  figure.dataset.name = name;
  figure.dataset.values = JSON.stringify([value]);
  figure.append(el("figcaption", "what", `${caption} = ${fmt(value)}`));
  return figure;
}

// A row over the keys (scores, masked scores, weights), each key's token above its cell.
function keyRow(name, caption, values, labels, {signed = false, masked = new Set(), stored = values} = {}) {
  const figure = el("figure", "vec keys");
  figure.dataset.name = name;
  figure.dataset.index = String(state.head);
  figure.dataset.values = JSON.stringify(stored);
  figure.append(el("figcaption", "what", `${caption} [${values.length}]`));
  const scroll = el("div", "scroll");
  const canvas = el("canvas");
  canvas.setAttribute("role", "img");
  canvas.setAttribute("aria-label", `${caption} over ${values.length} keys`);
  scroll.append(canvas);
  const hover = el("output", "hover", "hover over a key");
  figure.append(scroll, hover);
  const query = name.includes("cross_attn") ? -1 : state.position;
  const geometry = tokenRow(canvas, values, labels, {width: width(), signed, masked, marked: query});
  canvas.addEventListener("mousemove", (event) => {
    const cell = cellAt(geometry, canvas, event);
    if (!cell) return;
    const j = cell[1];
    hover.textContent = `key ${j} “${labels[j]}”: ${masked.has(j) ? "masked (−∞)" : fmt(values[j])}`;
  });
  return figure;
}

// Every token's vector of one kv head ([T or S][Dh]), in a <details> (open for short prompts); `weights`: the
// attention each token gets, shaded beside its row.
function keyMatrix(name, caption, rows, labels, {masked = new Set(), weights = null} = {}) {
  const figure = el("details", "vec matrix");
  figure.open = rows.length <= 16;
  figure.dataset.name = name;
  figure.dataset.index = String(kvHead());
  figure.append(el("summary", "what", caption));
  const scroll = el("div", "scroll");
  const canvas = el("canvas");
  canvas.setAttribute("role", "img");
  canvas.setAttribute("aria-label", caption);
  scroll.append(canvas);
  const hover = el("output", "hover", "hover over a cell");
  figure.append(scroll, hover);
  const geometry = matrix(canvas, rows, {rowLabels: labels.map((t, j) => `${j} ${t}`), width: width(), masked, weights});
  canvas.addEventListener("mousemove", (event) => {
    const cell = cellAt(geometry, canvas, event);
    if (cell) {
      hover.textContent = `token ${cell[0]} “${labels[cell[0]]}”` + (weights ? ` (weight ${fmt(weights[cell[0]])})` : "") +
        `, [${cell[1]}] = ${fmt(rows[cell[0]][cell[1]])}`;
    }
  });
  return figure;
}

// A line saying whether `computed` (here, from the numbers shown) equals the model's `reference`, within the
// rounding of the numbers the page received (6 significant digits).
function check(text, computed, reference) {
  const difference = largestDifference([].concat(computed), [].concat(reference));
  const [low, high] = range([].concat(reference));
  const ok = difference <= 1e-3 * Math.max(1, Math.abs(low), Math.abs(high));
  return el("p", ok ? "check" : "check off", `${ok ? "✓" : "≠"} ${text} (largest difference ${fmt(difference)})`);
}

function note(text) {
  return el("p", "legend", text);
}

// ---- the steps -----------------------------------------------------------------------------------------------

function embeddingSteps() {
  const steps = [];
  const token = state.data.tokens[state.position];
  if (state.data.source_tokens) {
    const layers = new Set(Object.keys(state.data.names).filter((n) => n.startsWith("encoder.blocks."))
      .map((n) => n.split(".")[2])).size;
    steps.push(step({
      key: "encoder", title: "The encoder reads the source",
      equation: `enc = Encoder(source): ${layers} layers over the ${state.data.source_tokens.length} source tokens, ` +
                "each seeing all the others (no causal mask)",
      shapes: ["encoder.blocks.*: SxD"], code: "mulm_jax/models/encoder_decoder.py · EncoderDecoderLM.encode",
      parts: [note("Its output is what every decoder layer's cross-attention makes its keys and values from. " +
                   "The steps below follow the decoder's token.")]}));
  }
  const embed = act("embed");
  steps.push(step({
    key: "embed", title: `Token embedding of “${visible(token.text)}” (id ${token.id})`,
    equation: `x = E[${token.id}]: row ${token.id} of the token embedding table E [V, D]`,
    shapes: [shape("embed")], code: CODE.embed,
    parts: [vector("embed", "embed", embed),
            "pos_embed" in state.data.names ? null :
              note("No position vector is added: positions enter each attention through RoPE (or not at all).")]}));
  if ("pos_embed" in state.data.names) {
    const pos = act("pos_embed");
    const D = pos.length;
    const table = pos.map((_, d) => {
      const angle = state.position / 10000 ** ((d - (d % 2)) / D);
      return d % 2 ? Math.cos(angle) : Math.sin(angle);
    });
    const sinusoidal = largestDifference(pos, table) < 1e-4;
    const first = state.data.names["blocks.0.resid_pre"] ? act("blocks.0.resid_pre") : null;
    steps.push(step({
      key: "pos_embed", title: `Position embedding of position ${state.position}`,
      equation: sinusoidal ?
        `P[${state.position}][2i] = sin(${state.position} / 10000^(2i/D)), P[${state.position}][2i+1] = cos(…); ` +
        "x = E[id] + P[p]" :
        `x = E[id] + P[${state.position}]: row ${state.position} of the learned position table P [context, D]`,
      shapes: [shape("pos_embed")], code: sinusoidal ? CODE.sinusoidal : CODE.learned,
      parts: [vector("pos_embed", "pos_embed", pos),
              first ? check("embed + pos_embed = blocks.0.resid_pre", add(embed, pos), first) : null]}));
  }
  return steps;
}

function residStep(layer, name, previous, output, postNorm) {
  const x = act(name);
  const short = (n) => n.replace(`blocks.${layer}.`, "");
  let equation;
  let verified = null;
  if (!previous) {
    equation = layer === 0 ? ("pos_embed" in state.data.names ? "x = embed + pos_embed" : "x = embed") :
      `x = blocks.${layer - 1}.resid_post: the residual stream as the layer before left it`;
  } else if (postNorm) {
    equation = `${short(name)} = Norm(${short(previous)} + ${short(output)}): post-norm adds, then normalises`;
  } else {
    equation = `${short(name)} = ${short(previous)} + ${short(output)}: the sublayer's output added to the residual stream`;
    verified = check(`${short(previous)} + ${short(output)}`, add(act(previous), act(output)), x);
  }
  return step({key: name, title: previous ? "Residual add" : `Residual stream into layer ${layer}`, equation,
               shapes: [shape(name)], code: CODE.block, parts: [vector(name, name, x), verified]});
}

// The statistics a Norm takes of its input: LayerNorm or RMSNorm, whichever gives the model's scale factor.
function normKind(x, factor) {
  const D = x.length;
  const mean = x.reduce((a, b) => a + b, 0) / D;
  const meanSquare = x.reduce((a, b) => a + b * b, 0) / D;
  const variance = meanSquare - mean * mean;
  const ln = 1 / Math.sqrt(variance + 1e-5);
  const rms = 1 / Math.sqrt(meanSquare + 1e-5);
  return {kind: Math.abs(ln - factor) <= Math.abs(rms - factor) ? "layernorm" : "rmsnorm", mean, variance, meanSquare};
}

function normStep(module, input, inputText) {
  const factor = act(`${module}.scale_factor`)[0];
  const out = act(`${module}.out`);
  const stats = normKind(input, factor);
  const layer = stats.kind === "layernorm";
  return step({
    key: `${module}.out`, title: `${layer ? "LayerNorm" : "RMSNorm"} (${module})`,
    equation: [layer ? `out = (x − mean(x)) · s · γ + β,   s = 1 / √(var(x) + ε)` :
                       `out = x · s · γ,   s = 1 / √(mean(x²) + ε)`,
               `x = ${inputText}: ` + (layer ? `mean(x) = ${fmt(stats.mean)}, var(x) = ${fmt(stats.variance)}` :
                                              `mean(x²) = ${fmt(stats.meanSquare)}`)],
    shapes: [shape(`${module}.scale_factor`), shape(`${module}.out`)], code: CODE.norm,
    parts: [scalar(`${module}.scale_factor`, "s (scale factor)", factor), vector(`${module}.out`, `${module}.out`, out)]});
}

function qkvStep(module, inputText) {
  const h = state.head;
  const g = kvHead();
  const {num_heads: H, num_kv_heads: K} = state.data;
  const cross = module.endsWith("cross_attn");
  const gqa = K < H ? `Head ${h} reads kv head ${g}: ${H / K} query heads share each of the ${K} key/value heads ` +
                      "(grouped-query attention)." : "";
  const parts = [vector(`${module}.q`, `q, head ${h}`, act(`${module}.q`)[h], {index: h})];
  if (cross) {
    const labels = sourceTokens();
    parts.push(keyMatrix(`${module}.k`, `k of every source token, kv head ${g} [S, Dh]`,
                         act(`${module}.k`).map((row) => row[g]), labels),
               keyMatrix(`${module}.v`, `v of every source token, kv head ${g} [S, Dh]`,
                         act(`${module}.v`).map((row) => row[g]), labels));
  } else {
    parts.push(vector(`${module}.k`, `k, kv head ${g}`, act(`${module}.k`)[g], {index: g}),
               vector(`${module}.v`, `v, kv head ${g}`, act(`${module}.v`)[g], {index: g}));
  }
  if (gqa) parts.push(note(gqa));
  return step({
    key: `${module}.qkv`, title: cross ? "Cross-attention: queries from the decoder, keys and values from the source" :
      "Queries, keys and values",
    equation: cross ? [`q = x · W_Q (+ b_Q), x = ${inputText}; split into ${H} heads of Dh`,
                       "k[s] = enc[s] · W_K, v[s] = enc[s] · W_V for every source token s (enc: the encoder's output)"] :
      [`q = x · W_Q (+ b_Q) → ${H} heads;  k = x · W_K,  v = x · W_V → ${K} kv heads;  x = ${inputText}`],
    shapes: [shape(`${module}.q`, `head ${h}: Dh`), shape(`${module}.k`, cross ? `kv head ${g}: SxDh` : `kv head ${g}: Dh`),
             shape(`${module}.v`, cross ? `kv head ${g}: SxDh` : `kv head ${g}: Dh`)],
    code: CODE.projections, parts});
}

function ropeStep(module) {
  const h = state.head;
  const g = kvHead();
  const p = state.position;
  const q = act(`${module}.q`)[h];
  const rq = act(`${module}.rot_q`)[h];
  return step({
    key: `${module}.rope`, title: `RoPE: q and k rotated by the position (${p})`,
    equation: [`rot[i] = x[i]·cos(${p}·θᵢ) − x[i+Dh/2]·sin(${p}·θᵢ),  ` +
               `rot[i+Dh/2] = x[i+Dh/2]·cos(${p}·θᵢ) + x[i]·sin(${p}·θᵢ)`,
               "θᵢ = θ^(−2i/Dh): each pair of dimensions turns at its own rate, so q·k depends on how far apart " +
               "the tokens are"],
    shapes: [shape(`${module}.rot_q`, `head ${h}: Dh`), shape(`${module}.rot_k`, `kv head ${g}: Dh`)], code: CODE.rope,
    parts: [vector(`${module}.q`, `q before, head ${h}`, q, {index: h}),
            vector(`${module}.rot_q`, `rot_q after, head ${h}`, rq, {index: h}),
            vector(`${module}.k`, `k before, kv head ${g}`, act(`${module}.k`)[g], {index: g}),
            vector(`${module}.rot_k`, `rot_k after, kv head ${g}`, act(`${module}.rot_k`)[g], {index: g}),
            check("a rotation keeps the length: ‖rot_q‖ = ‖q‖", norm(rq), norm(q))]});
}

// The keys of the followed head's kv head: [T or S][Dh], or null until loaded.
function keys(module, which) {
  if (module.endsWith("cross_attn")) return act(`${module}.${which}`).map((row) => row[kvHead()]);
  const loaded = state.kv.get(`${module.split(".")[1]}`);
  if (!loaded) return null;
  const name = which === "k" && loaded[`${module}.rot_k`] ? `${module}.rot_k` : `${module}.${which}`;
  return loaded[name].values.map((row) => row[kvHead()]);
}

function keyLabels(module) {
  return module.endsWith("cross_attn") ? sourceTokens() : tokens();
}

function masked(module) {
  if (module.endsWith("cross_attn")) return new Set();
  const pattern = act(`${module}.pattern`)[state.head];
  return new Set(pattern.map((w, j) => j).filter((j) => j > state.position || pattern[j] === 0));
}

function scoresStep(module) {
  const h = state.head;
  const scores = act(`${module}.scores`)[h];
  const labels = keyLabels(module);
  const Dh = act(`${module}.q`)[h].length;
  const rope = `${module}.rot_q` in state.data.names;
  const q = act(rope ? `${module}.rot_q` : `${module}.q`)[h];
  const k = keys(module, "k");
  const parts = [keyRow(`${module}.scores`, `scores of head ${h} over the keys`, scores, labels, {signed: true})];
  if (k) {
    parts.push(keyMatrix(`${module}.${rope ? "rot_k" : "k"}`, `${rope ? "rot_k" : "k"} of every key, kv head ${kvHead()} [${
      module.endsWith("cross_attn") ? "S" : "T"}, Dh]`, k, labels, {masked: masked(module)}));
    const recomputed = k.map((row) => row.reduce((sum, x, i) => sum + x * q[i], 0) / Math.sqrt(Dh));
    parts.push(check(`recomputed here as ${rope ? "rot_q · rot_k[j]" : "q · k[j]"} / √Dh from these vectors`,
                     recomputed, scores));
  } else {
    parts.push(note("Loading every key's k…"));
  }
  return step({
    key: `${module}.scores`, title: "Scores: how well the query matches each key",
    equation: `scores[j] = ${rope ? "rot_q · rot_k[j]" : "q · k[j]"} / √Dh  (Dh = ${Dh}) for every key j` +
              (module.endsWith("cross_attn") ? " of the source" : ", the mask not yet applied"),
    shapes: [shape(`${module}.scores`, `head ${h}: ${module.endsWith("cross_attn") ? "S" : "T"}`)],
    code: CODE.attention, parts});
}

function maskStep(module) {
  const h = state.head;
  const scores = act(`${module}.scores`)[h];
  const hidden = masked(module);
  const cross = module.endsWith("cross_attn");
  return step({
    key: `${module}.mask`, title: cross ? "Mask: every source token is visible" : "Mask: no looking ahead",
    equation: cross ? "masked[s] = scores[s] for every source token s (only a padded source's padding is hidden)" :
      `masked[j] = scores[j] if the query at ${state.position} may see key j (j ≤ ${state.position}), −∞ otherwise`,
    shapes: [`${module}.mask: ${cross ? "HxTxS" : "HxTxT"} (true: may attend); head ${h}: ${cross ? "S" : "T"}`],
    code: cross ? CODE.attention : CODE.mask,
    parts: [keyRow(`${module}.masked`, `masked scores of head ${h}`, scores, keyLabels(module),
                   {signed: true, masked: hidden, stored: scores.map((s, j) => (hidden.has(j) ? null : s))}),
            note(cross ? "" : `${hidden.size} of ${scores.length} keys hidden (crossed out): a decoder token sees ` +
                              "itself and the tokens before it.")]});
}

function softmaxStep(module) {
  const h = state.head;
  const pattern = act(`${module}.pattern`)[h];
  const labels = keyLabels(module);
  const hidden = masked(module);
  const scores = act(`${module}.scores`)[h];
  const visibleScores = scores.map((s, j) => (hidden.has(j) ? -Infinity : s));
  const recomputed = logSoftmax(visibleScores).map(Math.exp);
  const strongest = pattern.map((w, j) => j).sort((a, b) => pattern[b] - pattern[a]).slice(0, 3)
    .map((j) => `“${labels[j]}” (${j}) ${fmt(pattern[j])}`).join(", ");
  return step({
    key: `${module}.pattern`, title: "Softmax: the attention pattern",
    equation: "pattern[j] = exp(masked[j]) / Σₖ exp(masked[k]): weights ≥ 0 that sum to 1",
    shapes: [shape(`${module}.pattern`, `head ${h}: ${module.endsWith("cross_attn") ? "S" : "T"}`)],
    code: CODE.attention,
    parts: [keyRow(`${module}.pattern`, `pattern of head ${h}`, pattern, labels, {masked: hidden}),
            note(`Σ = ${fmt(pattern.reduce((a, b) => a + b, 0))}; attends most to ${strongest}`),
            check("softmax of the masked scores, recomputed here", recomputed, pattern)]});
}

function zStep(module) {
  const h = state.head;
  const z = act(`${module}.z`)[h];
  const pattern = act(`${module}.pattern`)[h];
  const v = keys(module, "v");
  const labels = keyLabels(module);
  const parts = [vector(`${module}.z`, `z, head ${h}`, z, {index: h})];
  if (v) {
    const axis = module.endsWith("cross_attn") ? "S" : "T";
    parts.push(keyMatrix(`${module}.v`, `v of every key, kv head ${kvHead()} [${axis}, Dh], ` +
                         "beside the weight the pattern gives it", v, labels, {masked: masked(module), weights: pattern}));
    const recomputed = z.map((_, i) => v.reduce((sum, row, j) => sum + pattern[j] * row[i], 0));
    parts.push(check("recomputed here as Σⱼ pattern[j] · v[j]", recomputed, z));
  } else {
    parts.push(note("Loading every key's v…"));
  }
  return step({
    key: `${module}.z`, title: "Weighted sum of the values",
    equation: "z = Σⱼ pattern[j] · v[j]: what this head reads from the tokens it attends to",
    shapes: [shape(`${module}.z`, `head ${h}: Dh`)], code: CODE.attention, parts});
}

function headsStep(module, layer) {
  const headOut = act(`${module}.head_out`);
  const out = act(`${module}.out`);
  const cross = module.endsWith("cross_attn");
  const list = el("div", "heads");
  headOut.forEach((values, h) => {
    const row = el("div", h === state.head ? "head chosen" : "head");
    row.append(vector(`${module}.head_out`, `head_out, head ${h}`, values, {index: h}));
    if (!cross) {
      const key = `${layer}:${h}`;
      const on = state.ablated.has(key);
      const button = el("button", "ablate", on ? `restore head ${h}` : `ablate head ${h}`);
      button.type = "button";
      button.dataset.ablate = key;
      button.setAttribute("aria-pressed", String(on));
      button.title = on ? "put this head's output back" : "zero this head's z (and so its head_out) in this forward pass";
      row.append(button);
    }
    list.append(row);
  });
  return step({
    key: `${module}.out`, title: "Heads concatenated and mixed by W_O",
    equation: ["head_out[h] = z[h] · W_O[h]: the heads' z side by side ([H·Dh] = [D]) times W_O [D, D], " +
               "one head's rows at a time",
               `${module.replace(`blocks.${layer}.`, "")}.out = Σₕ head_out[h] (+ b_O)`],
    shapes: [shape(`${module}.head_out`), shape(`${module}.out`)], code: CODE.projections,
    parts: [list, cross ? null : prediction("wt-prediction-step"), vector(`${module}.out`, `${module}.out`, out),
            note(`out − Σₕ head_out[h]: largest ${fmt(largestDifference(headOut.reduce((a, b) => add(a, b)), out))} ` +
                 "(the output bias b_O, where the model has one)")]});
}

function mlpStep(module) {
  const pre = act(`${module}.pre`);
  const post = act(`${module}.post`);
  const up = `${module}.pre_linear` in state.data.names ? act(`${module}.pre_linear`) : null;
  let kind = "SwiGLU";
  let equation = "post = silu(gate) ⊙ up,  gate = x · W_gate,  up = x · W_up,  silu(a) = a · sigmoid(a)";
  if (!up) {
    const gelu = (a) => 0.5 * a * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (a + 0.044715 * a ** 3)));
    const relu = (a) => Math.max(0, a);
    const kinds = [["GELU", gelu, "post = GELU(pre),  pre = x · W_in (+ b_in)"],
                   ["ReLU", relu, "post = max(0, pre),  pre = x · W_in (+ b_in)"],
                   ["ReLU²", (a) => relu(a) ** 2, "post = max(0, pre)²,  pre = x · W_in (+ b_in)"]];
    [kind, , equation] = kinds.map((k) => [...k, largestDifference(pre.map(k[1]), post)])
      .sort((a, b) => a[3] - b[3])[0];
  }
  const strongest = post.map((v, i) => i).sort((a, b) => Math.abs(post[b]) - Math.abs(post[a])).slice(0, NEURONS);
  const list = el("ol", "neurons");
  for (const i of strongest) {
    const input = up ? `gate ${fmt(pre[i])}, up ${fmt(up[i])}` : `pre ${fmt(pre[i])}`;
    const item = el("li", null, `neuron ${i}: ${input} → post ${fmt(post[i])}`);
    item.dataset.neuron = String(i);
    list.append(item);
  }
  return step({
    key: `${module}.post`, title: `MLP: ${kind}`, equation,
    shapes: [shape(`${module}.pre`), ...(up ? [shape(`${module}.pre_linear`)] : []), shape(`${module}.post`)],
    code: CODE.mlp,
    parts: [vector(`${module}.pre`, up ? "pre (gate)" : "pre", pre),
            up ? vector(`${module}.pre_linear`, "pre_linear (up)", up) : null, vector(`${module}.post`, "post", post),
            el("h4", null, `The ${NEURONS} most active neurons (by |post|)`), list]});
}

function mlpOutStep(module) {
  return step({
    key: `${module}.out`, title: "MLP output",
    equation: "mlp.out = post · W_out (+ b_out): back to the residual stream's width",
    shapes: [shape(`${module}.out`)], code: CODE.mlp,
    parts: [vector(`${module}.out`, `${module}.out`, act(`${module}.out`))]});
}

// Every step of one layer, in the model's forward order (pre- or post-norm, cross-attention, RoPE, SwiGLU).
function layerSteps(layer) {
  const prefix = `blocks.${layer}.`;
  const parts = Object.keys(state.data.names).filter((n) => n.startsWith(prefix)).map((n) => n.slice(prefix.length));
  const postNorm = parts.indexOf("ln1.out") > parts.indexOf("attn.out");
  const steps = [];
  let resid = null;
  let output = null;  // the last sublayer's output
  let normed = null;  // the last norm's output
  for (const part of parts) {
    const name = prefix + part;
    const [module, leaf] = part.includes(".") ? part.split(".") : [null, part];
    if (!module) {
      steps.push(residStep(layer, name, part === "resid_pre" ? null : resid, output, postNorm));
      resid = name;
    } else if (module.startsWith("ln") && leaf === "out") {
      const input = postNorm ? add(act(resid), act(output)) : act(resid);
      const inputText = postNorm ? `${resid.slice(prefix.length)} + ${output.slice(prefix.length)}` :
        resid.slice(prefix.length);
      steps.push(normStep(prefix + module, input, inputText));
      normed = prefix + module + ".out";
    } else if (module.endsWith("attn")) {
      const m = prefix + module;
      const input = (postNorm ? resid : normed).slice(prefix.length);
      if (leaf === "q") steps.push(qkvStep(m, input));
      else if (leaf === "rot_q") steps.push(ropeStep(m));
      else if (leaf === "scores") steps.push(scoresStep(m), maskStep(m));
      else if (leaf === "pattern") steps.push(softmaxStep(m));
      else if (leaf === "z") steps.push(zStep(m));
      else if (leaf === "out") {
        steps.push(headsStep(m, layer));
        output = name;
      }
    } else if (module === "mlp") {
      if (leaf === "post") steps.push(mlpStep(prefix + module));
      else if (leaf === "out") {
        steps.push(mlpOutStep(prefix + module));
        output = name;
      }
    }
  }
  return steps;
}

const rankings = new WeakMap();  // activations answer -> its log-probabilities and likeliest ids

function topTokens(data, count) {
  if (!rankings.has(data)) {
    const logits = data.activations.logits.values;
    rankings.set(data, {logits, logp: logSoftmax(maskVocab(logits, state.vocab)), ids: largest(logits, TOP, state.vocab)});
  }
  const {logits, logp, ids} = rankings.get(data);
  return ids.slice(0, count).map((id) => ({id, prob: Math.exp(logp[id]), logit: logits[id]}));
}

function finalSteps() {
  const steps = [];
  const L = state.data.num_layers;
  if ("ln_final.out" in state.data.names) {
    steps.push(normStep("ln_final", act(`blocks.${L - 1}.resid_post`), `blocks.${L - 1}.resid_post`));
  }
  const logits = act("logits");
  const top = topTokens(state.data, TOP);
  const list = el("ol", "top");
  for (const t of top) list.append(el("li", null, `“${label(t.id)}” (id ${t.id}): logit ${fmt(t.logit)}`));
  const padded = logits.length > state.vocab ?
    ` The tokenizer has ${state.vocab} tokens: ids ${state.vocab} to ${logits.length - 1} are padded rows of the ` +
    "table." : "";
  steps.push(step({
    key: "logits", title: "Logits: a score for every token of the vocabulary",
    equation: `logits = x · Eᵀ (the embedding table again, when tied) or x · W_U; x = ${
      "ln_final.out" in state.data.names ? "ln_final.out" : `blocks.${L - 1}.resid_post`}`,
    shapes: [shape("logits")], code: CODE.logits,
    parts: [vector("logits", "logits", logits), note(`The ${TOP} largest:${padded}`), list]}));
  steps.push(step({
    key: "probs", title: "Probabilities of the next token",
    equation: `p = softmax(logits) over the tokenizer's ${state.vocab} tokens (padded ids are never drawn: mask_vocab)`,
    shapes: [`p: V [${logits.length}]`], code: CODE.probs,
    parts: [probabilityList(top), prediction("wt-prediction-final")]}));
  return steps;
}

function probabilityList(top) {
  const list = el("ol", "alternatives");
  for (const t of top) {
    const item = el("li");
    item.dataset.id = String(t.id);
    item.dataset.prob = String(t.prob);
    const meter = el("meter");
    meter.min = 0;
    meter.max = 1;
    meter.value = t.prob;
    item.append(el("code", null, label(t.id)), meter, el("span", null, percent(t.prob)));
    list.append(item);
  }
  return list;
}

// How the ablated heads change the prediction: the top tokens now, and the probability of the top one without them.
function prediction(id) {
  const box = el("div", "prediction");
  box.id = id;
  fillPrediction(box);
  return box;
}

function fillPrediction(box) {
  const now = topTokens(state.data, 5);
  box.dataset.top = JSON.stringify(now.map((t) => ({id: t.id, prob: t.prob})));
  const listed = now.map((t) => `“${label(t.id)}” ${percent(t.prob)}`).join(", ");
  if (!state.ablated.size) {
    box.textContent = `Next token: ${listed}. Ablate a head to see what it contributes.`;
    delete box.dataset.baseTop;
    return;
  }
  const base = topTokens(state.base, 1)[0];
  const logits = state.data.activations.logits.values;
  const pNow = Math.exp(logSoftmax(maskVocab(logits, state.vocab))[base.id]);
  box.dataset.baseTop = String(base.id);
  box.dataset.baseProb = String(base.prob);
  box.dataset.baseProbNow = String(pNow);
  const heads = ablatedList().map((k) => `L${k.replace(":", "H")}`).join(", ");
  box.textContent = `With ${heads} ablated: ${listed}. Without: “${label(base.id)}” ${percent(base.prob)}, now ` +
    `${percent(pNow)} (${pNow >= base.prob ? "+" : "−"}${percent(Math.abs(pNow - base.prob))}).`;
}

// ---- painting ------------------------------------------------------------------------------------------------

function paint() {
  $("wt-result").hidden = false;
  const {num_layers: L, num_heads: H} = state.data;
  state.layer = Math.min(state.layer, L - 1);
  state.head = Math.min(state.head, H - 1);
  options($("wt-layer"), L, "layer", state.layer);
  options($("wt-head"), H, "head", state.head);
  paintTokens();
  paintSteps();
  paintPrediction();
  paintAblated();
  const ids = state.data.tokens.slice(0, state.position + 1).map((t) => t.id);
  const seen = new Set(ids);
  explorer.show({
    logits: act("logits"), seen, vocab: state.vocab, labels: state.labels, model: state.model,
    ablated: state.ablated.size > 0,
    seenText: [...seen].map((id) => `“${visible(state.data.tokens.find((t) => t.id === id).text)}”`).join(" "),
    prompt: state.data.source_tokens ? (state.position === 0 ?
      [...state.data.source_tokens.map((t) => t.id), state.data.tokens[0].id] : null) : ids,
    heading: `After “${visible(state.data.tokens[state.position].text)}” (position ${state.position})` +
             (state.ablated.size ? `, with ${ablatedList().length} head(s) ablated` : "") +
             ": the model's distribution over the next token, as the server would draw from it."});
  const list = $("wt-steps");
  list.dataset.position = String(state.position);
  list.dataset.state = "ready";
  const wanted = explorer.candidates(act("logits"), seen, state.vocab).concat(topTokens(state.data, TOP).map((t) => t.id));
  if (state.ablated.size) wanted.push(...topTokens(state.base, 5).map((t) => t.id));
  delete list.dataset.labels;
  const painted = state.data;
  app.run(async () => {
    await fetchLabels(wanted);
    if (!state || state.data !== painted) return;
    for (const id of ["wt-prediction", "wt-prediction-step", "wt-prediction-final"]) if ($(id)) fillPrediction($(id));
    explorer.relabel();
    relabelFinal();
    $("wt-steps").dataset.labels = "ready";
  });
}

// The steps of the followed token: the embeddings, every layer (the chosen one open), the output.
function paintSteps() {
  const {num_layers: L} = state.data;
  const list = $("wt-steps");
  const layers = Array.from({length: L}, (_, l) => {
    const details = el("details", "layer");
    details.dataset.layer = String(l);
    const summary = el("summary", null, `Layer ${l}: ‖resid_pre‖ ${fmt(norm(act(`blocks.${l}.resid_pre`)))} → ` +
                                        `‖resid_post‖ ${fmt(norm(act(`blocks.${l}.resid_post`)))}`);
    const steps = el("ol", "steps");
    details.append(summary, steps);
    details.open = l === state.layer;
    details.addEventListener("toggle", () => {
      if (details.open && state.layer !== l) openLayer(l);
    });
    const item = el("li", "layer-item");
    item.append(details);
    return item;
  });
  list.replaceChildren(...embeddingSteps(), ...layers, ...finalSteps());
  renderLayer(state.layer);
}

function relabelFinal() {
  for (const step of ["logits", "probs"]) {
    const old = $("wt-steps").querySelector(`li.step[data-step="${step}"]`);
    const fresh = finalSteps().find((s) => s.dataset.step === step);
    if (old && fresh) old.replaceWith(fresh);
  }
}

function options(select, count, name, value) {
  select.replaceChildren(...Array.from({length: count}, (_, i) => new Option(`${name} ${i}`, String(i))));
  select.value = String(value);
}

function paintTokens() {
  const source = $("wt-source");
  source.hidden = !state.data.source_tokens;
  if (state.data.source_tokens) {
    source.replaceChildren(el("span", "legend", "source: "), ...state.data.source_tokens.map((t) => {
      const span = el("span", "tok source", t.text.replaceAll("\n", "↵\n"));
      span.title = `source token, id ${t.id}`;
      return span;
    }));
  }
  $("wt-tokens").replaceChildren(...state.data.tokens.map((t, position) => {
    // a newline shows as ↵ before the break, so that it can be clicked too
    const span = tokenElement(t.text.replaceAll("\n", "↵\n"), 0, {position}, `position ${position}, id ${t.id}`);
    span.dataset.position = String(position);
    if (position === state.position) span.setAttribute("aria-pressed", "true");
    return span;
  }));
  $("wt-following").textContent = `Following “${visible(state.data.tokens[state.position].text)}” at position ` +
    `${state.position} of ${state.data.tokens.length}`;
}

function paintPrediction() {
  fillPrediction($("wt-prediction"));
}

function paintAblated() {
  const keys = ablatedList();
  $("wt-ablated").replaceChildren(...keys.map((key) => {
    const button = el("button", "chip", `L${key.replace(":", "H")} ablated ×`);
    button.type = "button";
    button.dataset.ablate = key;
    button.title = "restore this head";
    return button;
  }));
}

function openLayer(layer) {
  state.layer = layer;
  $("wt-layer").value = String(layer);
  for (const details of $("wt-steps").querySelectorAll("details.layer")) {
    details.open = Number(details.dataset.layer) === layer;
  }
  renderLayer(layer);
}

function renderLayer(layer) {
  const details = $("wt-steps").querySelector(`details.layer[data-layer="${layer}"]`);
  if (!details) return;
  for (const other of $("wt-steps").querySelectorAll("details.layer > ol.steps")) {
    if (other.parentElement !== details) other.replaceChildren();
  }
  details.querySelector("ol.steps").replaceChildren(...layerSteps(layer));
  const list = $("wt-steps");
  const key = `${layer}`;
  list.dataset.layer = String(layer);
  list.dataset.head = String(state.head);
  list.dataset.keys = state.kv.get(key) || !(`blocks.${layer}.attn.k` in state.data.names) ? "ready" : "loading";
  list.dataset.width = String(width());
  if (!state.kv.has(key) && `blocks.${layer}.attn.k` in state.data.names) {
    const current = state;
    app.run(async () => {
      await fetchKeys(layer);
      if (state === current && state.layer === layer) renderLayer(layer);
    });
  }
}
