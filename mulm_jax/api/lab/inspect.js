// Inspect: one POST /v1/inspect drawn as tokens shaded by surprisal, an attention heatmap per layer and head,
// all heads of a layer as small multiples (and an encoder-decoder's cross-attention over the source), the logit-lens
// grid and a table of head roles.

import {asCurl, post} from "./api.js";
import {blue, cellAt, heatmap, textGrid, visible} from "./draw.js";
import {table} from "./tables.js";
import {onTokenPick, showAlternatives, tokenElement} from "./tokens.js";

const $ = (id) => document.getElementById(id);
const SURPRISAL_SCALE = 6;  // nats shaded fully
const ROLE_COLUMNS = [["layer", "layer"], ["head", "head"], ["entropy", "entropy"],
                      ["mean_distance", "mean distance"], ["previous_token", "previous-token"],
                      ["induction", "induction"]];
const SCORES = ["previous_token", "induction"];  // in [0, 1]: shaded
let app;
let trace = null;
let attention = null;  // geometry of the drawn heatmap
let cross = null;  // geometry of the drawn cross-attention heatmap
let lens = null;

export function init(lab) {
  app = lab;
  $("in-form").addEventListener("submit", (event) => {
    event.preventDefault();
    app.run(inspect);
  });
  $("in-layer").addEventListener("change", drawAttention);
  $("in-head").addEventListener("change", drawAttention);
  $("in-attention").addEventListener("mousemove", hoverAttention);
  $("in-cross").addEventListener("mousemove", hoverCross);
  $("in-lens").addEventListener("mousemove", hoverLens);
  $("in-heads").addEventListener("click", (event) => {
    const button = event.target.closest("button[data-head]");
    if (button) select(Number($("in-layer").value), Number(button.dataset.head));
  });
  $("in-roles").addEventListener("click", (event) => {
    const row = event.target.closest("tr[data-index]");
    const role = row && trace.heads[Number(row.dataset.index)];
    if (role) select(role.layer, role.head);
  });
  onTokenPick($("in-tokens"), (info) => showAlternatives(
    $("in-detail"), info.logprob === null ? `“${visible(info.text)}” is the first token: nothing predicts it` :
      `“${visible(info.text)}”: p = ${(100 * Math.exp(info.logprob)).toFixed(1)}%, surprisal ` +
      `${(-info.logprob).toFixed(2)} nats; the model's top predictions here:`,
    info.top.map((t) => ({text: t.text, prob: Math.exp(t.logprob)})), info.text));
}

export function show() {}

async function inspect() {
  const body = {model: app.model(), prompt: $("in-prompt").value, top_k: Number($("in-top-k").value)};
  $("in-curl").textContent = asCurl("POST", "/v1/inspect", body);
  trace = await post("/v1/inspect", body);
  options($("in-layer"), trace.num_layers, "layer");
  options($("in-head"), trace.num_heads, "head");
  $("in-result").hidden = false;
  drawTokens();
  drawAttention();
  drawLens();
  drawRoles();
}

function options(selectElement, count, name) {
  const keep = Number(selectElement.value) || 0;
  selectElement.replaceChildren(...Array.from({length: count}, (_, i) => new Option(`${name} ${i}`, String(i))));
  selectElement.value = String(Math.min(keep, count - 1));
}

function labels() {
  return trace.tokens.map((t) => visible(t.text));
}

function drawTokens() {
  $("in-detail").hidden = true;
  $("in-tokens").replaceChildren(...trace.tokens.map((t) => {
    const surprisal = t.logprob === null ? 0 : -t.logprob;
    const title = t.logprob === null ? "first token" : `surprisal ${surprisal.toFixed(2)} nats`;
    return tokenElement(t.text, surprisal / SURPRISAL_SCALE, t, title);
  }));
}

function select(layer, head) {
  $("in-layer").value = String(layer);
  $("in-head").value = String(head);
  drawAttention();
  $("in-attention").scrollIntoView({block: "nearest"});
}

// Cells of `cell` px that fit `width` for T tokens, between `lo` and `hi`.
function cellSize(width, T, lo, hi) {
  return Math.max(lo, Math.min(hi, Math.floor(width / T)));
}

function drawAttention() {
  if (!trace || !trace.attention) return;
  const layer = Number($("in-layer").value);
  const head = Number($("in-head").value);
  const weights = trace.attention[layer];
  const T = trace.tokens.length;
  const width = $("in-attention").parentElement.clientWidth - 110;
  attention = heatmap($("in-attention"), weights[head], {
    rowLabels: labels(), colLabels: labels(), cell: cellSize(width, T, 3, 24)});
  $("in-attention").dataset.layer = String(layer);
  $("in-attention").dataset.head = String(head);
  drawCross(layer, head, width);
  $("in-heads-title").textContent = `All heads of layer ${layer}`;
  const small = cellSize(120, T, 1, 8);
  $("in-heads").replaceChildren(...weights.map((matrix, h) => {
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.head = String(h);
    button.setAttribute("aria-pressed", String(h === head));
    const canvas = document.createElement("canvas");
    heatmap(canvas, matrix, {cell: small, labels: false});
    const caption = document.createElement("span");
    caption.textContent = `head ${h}`;
    button.append(canvas, caption);
    return button;
  }));
}

function sourceLabels() {
  return trace.source_tokens.map((t) => visible(t.text));
}

function drawCross(layer, head, width) {
  const shown = Boolean(trace.cross_attention);
  $("in-cross-panel").hidden = !shown;
  if (!shown) return;
  const cells = Math.max(trace.tokens.length, trace.source_tokens.length);
  cross = heatmap($("in-cross"), trace.cross_attention[layer][head], {
    rowLabels: labels(), colLabels: sourceLabels(), cell: cellSize(width, cells, 3, 24)});
}

function hoverCross(event) {
  const cell = cross && cellAt(cross, $("in-cross"), event);
  if (!cell) return;
  const [q, k] = cell;
  const weight = trace.cross_attention[Number($("in-layer").value)][Number($("in-head").value)][q][k];
  $("in-cross-hover").textContent =
    `decoder ${q} “${labels()[q]}” → source ${k} “${sourceLabels()[k]}”: weight ${weight.toFixed(4)}`;
}

function hoverAttention(event) {
  const cell = attention && cellAt(attention, $("in-attention"), event);
  if (!cell) return;
  const [q, k] = cell;
  const weight = trace.attention[Number($("in-layer").value)][Number($("in-head").value)][q][k];
  $("in-attention-hover").textContent =
    `query ${q} “${labels()[q]}” → key ${k} “${labels()[k]}”: weight ${weight.toFixed(4)}`;
}

function drawLens() {
  const shown = Boolean(trace.lens);
  $("in-lens").hidden = !shown;
  if (!shown) return;
  const cells = trace.lens.top.map((row, l) => row.map((top, t) => ({
    text: visible(top[0].text), value: top[0].prob, mark: trace.lens.next_rank[l][t] === 0})));
  lens = textGrid($("in-lens"), cells, {
    rowLabels: cells.map((_, l) => (l === cells.length - 1 ? `out ${l}` : `block ${l}`)), colLabels: labels()});
}

function hoverLens(event) {
  const cell = lens && cellAt(lens, $("in-lens"), event);
  if (!cell) return;
  const [l, t] = cell;
  const top = trace.lens.top[l][t].map((p) => `“${visible(p.text)}” ${(100 * p.prob).toFixed(1)}%`).join(", ");
  const rank = trace.lens.next_rank[l][t];
  const next = t + 1 < trace.tokens.length ?
    `; actual next “${labels()[t + 1]}”: rank ${rank === null ? "—" : rank}, p ` +
    `${(100 * trace.lens.next_prob[l][t]).toFixed(1)}%` : "";
  const norm = trace.residual_norm ? `; residual norm ${trace.residual_norm[l][t].toFixed(2)}` : "";
  $("in-lens-hover").textContent = `after block ${l}, at “${labels()[t]}” (position ${t}): ${top}${next}${norm}`;
}

function drawRoles() {
  const heads = trace.heads || [];
  table($("in-roles"), ROLE_COLUMNS.map(([, title]) => title),
        heads.map((role) => ROLE_COLUMNS.map(([key]) => (Number.isInteger(role[key]) ? String(role[key]) :
                                                          role[key] === null ? null : role[key].toFixed(3)))),
        "no head roles in this trace");
  heads.forEach((role, i) => {
    const cells = $("in-roles").rows[i + 1].cells;
    ROLE_COLUMNS.forEach(([key], c) => {
      if (!SCORES.includes(key)) return;
      cells[c].style.backgroundColor = blue(role[key] || 0);
      if (role[key] > 0.55) cells[c].className = "dark";
    });
  });
}
