// Embeddings: the embedding space of a served model (POST /v1/inspect/embeddings): the tokens nearest to a token, to
// the residual stream at a layer and position of a prompt, or to an analogy a − b + c, as a table with cosines; a
// scatter of the embedding table's PCA coloured by token class; the prompt's residual stream, a layer at a time.

import {asCurl, post} from "./api.js";
import {prepare, visible} from "./draw.js";
import {table} from "./tables.js";

const $ = (id) => document.getElementById(id);
// The colours of inspect.draw.CLASS_COLOURS, by the classes of inspect.embedding_space.
const COLOURS = {
  "byte": "#9e9e9e", "whitespace": "#17becf", "word start": "#1f77b4", "upper": "#d62728", "lower": "#ff7f0e",
  "digit": "#2ca02c", "punctuation": "#9467bd", "other": "#8c564b",
};
const ALL_LABELS = 160;  // a scatter of at most this many points labels each one
const PAD = 28;
let app;
let answer = null;  // the last answer
let model = null;  // the model whose table is drawn
let map = null;  // the scatter's drawn points, for hit-testing
let residual = null;

export function init(lab) {
  app = lab;
  const submit = (form, body) => $(form).addEventListener("submit", (event) => {
    event.preventDefault();
    app.run(() => ask(body()));
  });
  submit("em-token-form", () => ({token: tokenArg($("em-token").value)}));
  submit("em-residual-form", () => {
    const body = {prompt: $("em-prompt").value, position: Number($("em-position").value || -1)};
    if ($("em-layer").value !== "") body.layer = Number($("em-layer").value);
    return body;
  });
  submit("em-analogy-form", () => ({analogy: ["em-a", "em-b", "em-c"].map((id) => tokenArg($(id).value))}));
  $("em-map").addEventListener("mousemove", (event) => {
    const point = hit(map, $("em-map"), event);
    $("em-hover").textContent = point ? describe(point) : "Hover over a point for its token; click it for its nearest.";
  });
  $("em-map").addEventListener("click", (event) => {
    const point = hit(map, $("em-map"), event);
    if (!point) return;
    $("em-token").value = `#${point.id}`;
    app.run(() => ask({token: point.id}));
  });
  $("em-slider").addEventListener("input", drawResidual);
  $("em-residual").addEventListener("mousemove", (event) => {
    const point = hit(residual, $("em-residual"), event);
    if (point) $("em-residual-hover").textContent = `position ${point.position}: ${describe(point)}`;
  });
  window.addEventListener("resize", () => answer && draw());
}

// The table's projection on first showing a model (no query: only the points).
export async function show() {
  if (app.model() && app.model() !== model) await ask({});
}

// "#12" is token id 12; any other text is a token's text.
function tokenArg(text) {
  return /^#\d+$/.test(text) ? Number(text.slice(1)) : text;
}

function describe(point) {
  const flags = point.flags && point.flags.length ? ` (${point.flags.join(", ")})` : "";
  return `“${visible(point.text)}” #${point.id}: ${point.class}${flags}`;
}

async function ask(query) {
  const body = {model: app.model(), top_k: Number($("em-top-k").value), table: $("em-table").value, ...query};
  $("em-curl").textContent = asCurl("POST", "/v1/inspect/embeddings", body);
  answer = await post("/v1/inspect/embeddings", body);
  model = body.model;
  draw();
}

function draw() {
  drawNearest();
  drawMap();
  $("em-residual-panel").hidden = !answer.residual;
  if (answer.residual) {
    $("em-slider").max = String(answer.residual.length - 1);
    $("em-slider").value = String(answer.layer);
    drawResidual();
  }
}

function drawNearest() {
  const shown = (t) => `“${visible(t.text)}”`;
  let title = `${answer.ordinary_tokens} ordinary tokens in the ${answer.table} table` +
    (answer.tied ? " (tied: also the output head)" : "") + ". Ask for a token's nearest, a residual's or an analogy's.";
  let nearest = answer.nearest;
  if (answer.analogy) {
    const {a, b, c} = answer.analogy;
    title = `${shown(a)} − ${shown(b)} + ${shown(c)} (unit rows; a, b and c left out):`;
    nearest = answer.analogy.nearest;
  } else if (answer.token) {
    title = `Nearest to ${shown(answer.token)} (#${answer.token.id}) by cosine:`;
  } else if (answer.tokens) {
    const where = answer.layer === 0 ? "the embeddings" : `the output of block ${answer.layer - 1}`;
    title = `Nearest to the residual stream at layer ${answer.layer} (${where}), position ${answer.position} ` +
      `(${shown(answer.tokens[answer.position])}) by cosine:`;
  }
  $("em-status").textContent = title;
  const rows = (nearest || []).map((n, i) => {
    const swatch = document.createElement("span");
    swatch.className = "em-swatch";
    swatch.style.background = COLOURS[n.class];
    const name = document.createElement("span");
    name.append(swatch, n.class);
    return [String(i + 1), visible(n.text), String(n.id), name, n.cosine.toFixed(4)];
  });
  table($("em-nearest"), ["rank", "token", "id", "class", "cosine"], rows, "no query yet");
  $("em-nearest").dataset.ids = (nearest || []).map((n) => n.id).join(",");
  $("em-nearest").dataset.cosines = (nearest || []).map((n) => n.cosine).join(",");
}

// Pixel positions of points {x, y} scaled into a width x height box (the same scale on both axes).
function place(points, width, height) {
  const xs = points.map((p) => p.x);
  const ys = points.map((p) => p.y);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const scale = Math.min((width - 2 * PAD) / Math.max(x1 - x0, 1e-9), (height - 2 * PAD) / Math.max(y1 - y0, 1e-9));
  const cx = (width - scale * (x1 - x0)) / 2;
  const cy = (height - scale * (y1 - y0)) / 2;
  return points.map((p) => ({...p, px: cx + scale * (p.x - x0), py: height - cy - scale * (p.y - y0)}));
}

function size() {
  const width = Math.max(260, Math.min(760, $("em-map").parentElement.clientWidth - 4));
  return [width, Math.round(width * 0.72)];
}

function drawMap() {
  const projection = answer.projection;
  const canvas = $("em-map");
  const [width, height] = size();
  const ctx = prepare(canvas, width, height, "#fff");
  const marked = new Set([answer.token, ...(answer.nearest || []), ...(answer.analogy ?
    [answer.analogy.a, answer.analogy.b, answer.analogy.c, ...answer.analogy.nearest] : [])]
    .filter((t) => t).map((t) => t.id));
  const points = place(projection.points, width, height);
  const labelAll = points.length <= ALL_LABELS;
  ctx.textAlign = "center";
  for (const p of [...points.filter((q) => !marked.has(q.id)), ...points.filter((q) => marked.has(q.id))]) {
    const big = marked.has(p.id);
    ctx.globalAlpha = big ? 1 : 0.55;
    ctx.fillStyle = COLOURS[p.class];
    ctx.beginPath();
    ctx.arc(p.px, p.py, big ? 6 : labelAll ? 4 : 2.5, 0, 2 * Math.PI);
    ctx.fill();
    if (big) {
      ctx.strokeStyle = answer.token && p.id === answer.token.id ? "#000" : "#333";
      ctx.lineWidth = answer.token && p.id === answer.token.id ? 3 : 1.2;
      ctx.stroke();
    }
    ctx.globalAlpha = 1;
    if (labelAll || big) {
      ctx.fillStyle = "#222";
      ctx.font = big ? "bold 12px system-ui, sans-serif" : "11px system-ui, sans-serif";
      ctx.fillText(visible(p.text), p.px, p.py - 8);
    }
  }
  map = points;
  canvas.dataset.points = String(points.length);
  canvas.dataset.marked = [...marked].join(",");
  const [first, second] = projection.explained_variance_ratio.map((r) => (100 * r).toFixed(1));
  $("em-explained").textContent = `PCA of the ${projection.total} ordinary rows of the ${answer.table} table ` +
    `(component 1: ${first}% of the variance, component 2: ${second}%); ${points.length} shown (the first ` +
    "ordinary ids and every token the answer names). Outlined: the query and its nearest tokens.";
  legend(projection.points);
}

function legend(points) {
  const counts = {};
  for (const p of points) counts[p.class] = (counts[p.class] || 0) + 1;
  $("em-legend").replaceChildren(...answer.classes.filter((c) => counts[c]).map((c) => {
    const item = document.createElement("span");
    const swatch = document.createElement("span");
    swatch.className = "em-swatch";
    swatch.style.background = COLOURS[c];
    item.append(swatch, `${c} ${counts[c]}`);
    return item;
  }));
}

function drawResidual() {
  const layer = Number($("em-slider").value);
  const data = answer.residual[layer];
  const canvas = $("em-residual");
  const [width, height] = size();
  const ctx = prepare(canvas, width, height, "#fff");
  const points = place(data.points.map((p) => ({...p, ...answer.tokens[p.position]})), width, height);
  ctx.strokeStyle = "#bbb";
  ctx.lineWidth = 1;
  ctx.beginPath();
  points.forEach((p, i) => (i ? ctx.lineTo(p.px, p.py) : ctx.moveTo(p.px, p.py)));
  ctx.stroke();
  ctx.textAlign = "left";
  for (const p of points) {
    ctx.fillStyle = COLOURS[p.class];
    ctx.beginPath();
    ctx.arc(p.px, p.py, 4.5, 0, 2 * Math.PI);
    ctx.fill();
    if (p.position === answer.position || p.position === 0) {
      ctx.strokeStyle = "#000";
      ctx.lineWidth = p.position === answer.position ? 2.5 : 1;
      ctx.stroke();
    }
    ctx.fillStyle = "#222";
    ctx.fillText(visible(p.text), p.px + 6, p.py - 5);
  }
  residual = points;
  canvas.dataset.layer = String(layer);
  canvas.dataset.points = String(points.length);
  const where = layer === 0 ? "the embeddings (token + position)" : `after block ${layer - 1}`;
  const [first, second] = data.explained_variance_ratio.map((r) => (100 * r).toFixed(0));
  $("em-slider-label").textContent = `layer ${layer}: ${where}; its own PCA over the prompt's positions ` +
    `(${first}% + ${second}% of the variance). Joined in order; ringed: the first token and (thick) position ` +
    `${answer.position}.`;
}

// The point under the mouse (within 8 px), or null.
function hit(points, canvas, event) {
  if (!points) return null;
  const box = canvas.getBoundingClientRect();
  const x = event.clientX - box.left;
  const y = event.clientY - box.top;
  let best = null;
  let distance = 64;
  for (const p of points) {
    const d = (p.px - x) ** 2 + (p.py - y) ** 2;
    if (d < distance) [best, distance] = [p, d];
  }
  return best;
}
