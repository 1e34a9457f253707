// Drawing on canvas: colour scales, heatmaps with token labels, line charts; and token text made visible.

const BLUES = [[247, 251, 255], [107, 174, 214], [8, 48, 107]];

// A colour for value in [0, 1] on a white-to-dark-blue scale.
export function blue(value) {
  const v = Math.min(1, Math.max(0, value)) * (BLUES.length - 1);
  const i = Math.min(BLUES.length - 2, Math.floor(v));
  const f = v - i;
  const rgb = BLUES[i].map((c, k) => Math.round(c + (BLUES[i + 1][k] - c) * f));
  return `rgb(${rgb.join(",")})`;
}

// Background for a token shaded by how unexpected it was: 0 -> none, 1 -> strong orange.
export function surprise(value) {
  return `rgba(255, 122, 0, ${(0.75 * Math.min(1, Math.max(0, value))).toFixed(3)})`;
}

// A token's text with its whitespace shown: "␣" for a space, "↵" for a newline, "⇥" for a tab.
export function visible(text) {
  return text.replaceAll(" ", "␣").replaceAll("\n", "↵").replaceAll("\t", "⇥") || "∅";
}

// Sizes `canvas` to width x height CSS pixels at the screen's pixel ratio and returns its 2-D context, filled with
// `background` when one is given.
export function prepare(canvas, width, height, background) {
  const scale = window.devicePixelRatio || 1;
  canvas.width = Math.round(width * scale);
  canvas.height = Math.round(height * scale);
  canvas.style.width = `${width}px`;
  canvas.style.height = `${height}px`;
  const ctx = canvas.getContext("2d");
  ctx.setTransform(scale, 0, 0, scale, 0, 0);
  ctx.font = "11px system-ui, sans-serif";
  if (background) {
    ctx.fillStyle = background;
    ctx.fillRect(0, 0, width, height);
  }
  return ctx;
}

function clip(ctx, text, width) {
  let shown = text;
  while (shown.length > 1 && ctx.measureText(shown).width > width) shown = shown.slice(0, -1);
  return shown;
}

// Draws matrix_RxC (values >= 0) as cells of `cell` px, shaded from 0 to the largest value, with row labels at the
// left, column labels on top and a colour bar (when `labels`); returns the geometry for hit-testing with cellAt().
export function heatmap(canvas, matrix, {rowLabels = [], colLabels = [], cell = 16, labels = true} = {}) {
  const rows = matrix.length;
  const cols = rows ? matrix[0].length : 0;
  const largest = Math.max(1e-9, ...matrix.map((row) => Math.max(...row)));
  const left = labels ? 64 : 0;
  const top = labels ? 64 : 0;
  const bar = labels ? 48 : 0;
  const ctx = prepare(canvas, left + cols * cell + bar, top + rows * cell + (labels ? 4 : 0));
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      ctx.fillStyle = blue(matrix[r][c] / largest);
      ctx.fillRect(left + c * cell, top + r * cell, cell, cell);
    }
  }
  if (labels) {
    ctx.fillStyle = "#222";
    ctx.textBaseline = "middle";
    ctx.textAlign = "right";
    const every = Math.max(1, Math.ceil(12 / cell));
    for (let r = 0; r < rows; r += every) ctx.fillText(clip(ctx, rowLabels[r] || "", left - 6), left - 4, top + (r + 0.5) * cell);
    ctx.textAlign = "left";
    for (let c = 0; c < cols; c += every) {
      ctx.save();
      ctx.translate(left + (c + 0.5) * cell, top - 4);
      ctx.rotate(-Math.PI / 2);
      ctx.fillText(clip(ctx, colLabels[c] || "", top - 6), 0, 0);
      ctx.restore();
    }
    const x = left + cols * cell + 12;
    const height = Math.max(40, rows * cell);
    for (let y = 0; y < height; y++) {
      ctx.fillStyle = blue(1 - y / height);
      ctx.fillRect(x, top + y, 10, 1);
    }
    ctx.fillStyle = "#222";
    ctx.textAlign = "left";
    ctx.fillText(largest.toFixed(2), x + 13, top + 4);
    ctx.fillText("0", x + 13, top + height - 4);
  }
  return {left, top, cellWidth: cell, cellHeight: cell, rows, cols};
}

// The [row, col] of the cell under a mouse event, or null.
export function cellAt(geometry, canvas, event) {
  const box = canvas.getBoundingClientRect();
  const c = Math.floor((event.clientX - box.left - geometry.left) / geometry.cellWidth);
  const r = Math.floor((event.clientY - box.top - geometry.top) / geometry.cellHeight);
  return r >= 0 && c >= 0 && r < geometry.rows && c < geometry.cols ? [r, c] : null;
}

// A grid of labelled cells: cells_RxC of {text, value in [0, 1], mark}, shaded by value, outlined when marked;
// returns the geometry for cellAt().
export function textGrid(canvas, cells, {rowLabels = [], colLabels = [], cellWidth = 48, cellHeight = 20} = {}) {
  const rows = cells.length;
  const cols = rows ? cells[0].length : 0;
  const left = 64;
  const top = 22;
  const ctx = prepare(canvas, left + cols * cellWidth + 2, top + rows * cellHeight + 2);
  ctx.textBaseline = "middle";
  ctx.textAlign = "center";
  ctx.fillStyle = "#222";
  for (let c = 0; c < cols; c++) ctx.fillText(clip(ctx, colLabels[c] || "", cellWidth - 4), left + (c + 0.5) * cellWidth, top / 2);
  ctx.textAlign = "right";
  for (let r = 0; r < rows; r++) ctx.fillText(clip(ctx, rowLabels[r] || "", left - 6), left - 4, top + (r + 0.5) * cellHeight);
  ctx.textAlign = "center";
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const {text, value, mark} = cells[r][c];
      const x = left + c * cellWidth;
      const y = top + r * cellHeight;
      ctx.fillStyle = blue(value);
      ctx.fillRect(x, y, cellWidth, cellHeight);
      if (mark) {
        ctx.strokeStyle = "#ff7a00";
        ctx.lineWidth = 2;
        ctx.strokeRect(x + 1, y + 1, cellWidth - 2, cellHeight - 2);
      }
      ctx.fillStyle = value > 0.55 ? "#fff" : "#111";
      ctx.fillText(clip(ctx, text, cellWidth - 6), x + cellWidth / 2, y + cellHeight / 2);
    }
  }
  return {left, top, cellWidth, cellHeight, rows, cols};
}

// Line chart of series [{name, colour, points: [[x, y], ...], width = 2, dots = true}] with axes, ticks and a legend.
export function lineChart(canvas, series, {width = 640, height = 280, xLabel = "", yLabel = ""} = {}) {
  const ctx = prepare(canvas, width, height, "#fff");
  const pad = {left: 52, right: 12, top: 24, bottom: 36};
  const all = series.flatMap((s) => s.points);
  ctx.strokeStyle = "#888";
  ctx.strokeRect(pad.left, pad.top, width - pad.left - pad.right, height - pad.top - pad.bottom);
  ctx.fillStyle = "#222";
  ctx.textAlign = "center";
  ctx.fillText(xLabel, (pad.left + width - pad.right) / 2, height - 6);
  if (!all.length) {
    ctx.fillText("no points yet", width / 2, height / 2);
    return;
  }
  const xs = all.map((p) => p[0]);
  const ys = all.map((p) => p[1]);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs, Math.min(...xs) + 1)];
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  if (y1 - y0 < 1e-6) [y0, y1] = [y0 - 0.5, y1 + 0.5];
  const px = (x) => pad.left + ((x - x0) / (x1 - x0)) * (width - pad.left - pad.right);
  const py = (y) => height - pad.bottom - ((y - y0) / (y1 - y0)) * (height - pad.top - pad.bottom);
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (let i = 0; i <= 4; i++) {
    const y = y0 + ((y1 - y0) * i) / 4;
    ctx.fillText(y.toFixed(2), pad.left - 4, py(y));
  }
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  for (let i = 0; i <= 4; i++) {
    const x = x0 + ((x1 - x0) * i) / 4;
    ctx.fillText(tick(x, x1 - x0), px(x), height - pad.bottom + 4);
  }
  ctx.save();
  ctx.translate(12, (pad.top + height - pad.bottom) / 2);
  ctx.rotate(-Math.PI / 2);
  ctx.fillText(yLabel, 0, -6);
  ctx.restore();
  let legend = pad.left + 8;
  for (const s of series) {
    ctx.strokeStyle = ctx.fillStyle = s.colour;
    ctx.lineWidth = s.width ?? 2;
    ctx.beginPath();
    s.points.forEach(([x, y], i) => (i ? ctx.lineTo(px(x), py(y)) : ctx.moveTo(px(x), py(y))));
    ctx.stroke();
    if (s.dots ?? true) for (const [x, y] of s.points) ctx.fillRect(px(x) - 2, py(y) - 2, 4, 4);
    ctx.textAlign = "left";
    ctx.textBaseline = "middle";
    ctx.fillRect(legend, 12, 12, 3);
    ctx.fillStyle = "#222";
    ctx.fillText(`${s.name} (${s.points.length})`, legend + 16, 13);
    legend += 24 + ctx.measureText(`${s.name} (${s.points.length})`).width;
  }
}

// An axis tick's text: whole numbers (with k or M past ten thousand), one decimal over a short range.
function tick(value, range) {
  if (range < 10) return value.toFixed(1);
  if (Math.abs(value) >= 1e6) return `${(value / 1e6).toFixed(1)}M`;
  if (Math.abs(value) >= 1e4) return `${Math.round(value / 1e3)}k`;
  return String(Math.round(value));
}

// A colour for value in [-1, 1]: blue below zero, white at zero, red above.
export function diverging(value) {
  const v = Math.min(1, Math.max(-1, value));
  const end = v < 0 ? [33, 102, 172] : [178, 24, 43];
  const rgb = [247, 247, 247].map((c, k) => Math.round(c + (end[k] - c) * Math.abs(v)));
  return `rgb(${rgb.join(",")})`;
}

function largestMagnitude(values) {
  let largest = 0;
  for (const v of values) if (Number.isFinite(v) && Math.abs(v) > largest) largest = Math.abs(v);
  return largest || 1;
}

// The shade of one value: diverging around 0 (signed) or white-to-blue from 0; null / infinite: grey.
function shade(value, largest, signed) {
  if (value === null || !Number.isFinite(value)) return "#c8cdd3";
  return signed ? diverging(value / largest) : blue(value / largest);
}

// Draws a vector as a strip of cells wrapped to `width` px (at most `maxRows` rows: longer vectors are shown in
// bins, each the value of largest magnitude within it); returns the geometry for stripIndex().
export function strip(canvas, values, {width = 600, cell = 16, height = 14, signed = true, maxRows = 6} = {}) {
  const n = values.length;
  let size = Math.max(2, Math.min(cell, Math.floor(width / Math.max(1, n))));
  let perRow = Math.max(1, Math.floor(width / size));
  let bin = 1;
  if (Math.ceil(n / perRow) > maxRows) {
    size = 2;
    perRow = Math.max(1, Math.floor(width / size));
    bin = Math.ceil(n / (perRow * maxRows));
  }
  const cells = Math.ceil(n / bin);
  const rows = Math.max(1, Math.ceil(cells / perRow));
  const shown = [];
  for (let c = 0; c < cells; c++) {
    let pick = null;
    for (let i = c * bin; i < Math.min(n, (c + 1) * bin); i++) {
      if (pick === null || Math.abs(values[i]) > Math.abs(pick)) pick = values[i];
    }
    shown.push(pick);
  }
  const largest = largestMagnitude(values);
  const ctx = prepare(canvas, Math.min(cells, perRow) * size, rows * height);
  shown.forEach((v, c) => {
    ctx.fillStyle = shade(v, largest, signed);
    ctx.fillRect((c % perRow) * size, Math.floor(c / perRow) * height, size, height - 1);
  });
  return {size, perRow, height, bin, n, largest};
}

// The range [first, last] of the values under a mouse event on a strip, or null.
export function stripIndex(geometry, canvas, event) {
  const box = canvas.getBoundingClientRect();
  const c = Math.floor((event.clientX - box.left) / geometry.size);
  const r = Math.floor((event.clientY - box.top) / geometry.height);
  if (c < 0 || c >= geometry.perRow || r < 0) return null;
  const first = (r * geometry.perRow + c) * geometry.bin;
  return first < geometry.n ? [first, Math.min(geometry.n, first + geometry.bin) - 1] : null;
}

// Draws rows of values (a matrix, e.g. one vector per token) as cells with labels at the left, shaded on one
// scale; masked rows (a Set of row indices) are hatched. Returns the geometry for cellAt().
export function matrix(canvas, rows, {rowLabels = [], cell = 10, signed = true, width = 600, masked = new Set(),
                                      weights = null} = {}) {
  const cols = rows.length ? rows[0].length : 0;
  const left = weights ? 86 : 72;
  const size = Math.max(2, Math.min(cell, Math.floor((width - left) / Math.max(1, cols))));
  const height = Math.max(size, 12);
  const largest = largestMagnitude(rows.flat());
  const ctx = prepare(canvas, left + cols * size, rows.length * height);
  ctx.textBaseline = "middle";
  ctx.textAlign = "right";
  const heaviest = weights ? Math.max(1e-9, ...weights) : 1;
  rows.forEach((row, r) => {
    ctx.fillStyle = masked.has(r) ? "#9aa3ad" : "#222";
    ctx.fillText(clip(ctx, rowLabels[r] || "", left - 22), weights ? left - 18 : left - 4, (r + 0.5) * height);
    if (weights) {
      ctx.fillStyle = blue(weights[r] / heaviest);
      ctx.fillRect(left - 14, r * height, 10, height - 1);
    }
    row.forEach((v, c) => {
      ctx.fillStyle = masked.has(r) ? "#eceff2" : shade(v, largest, signed);
      ctx.fillRect(left + c * size, r * height, size, height - 1);
    });
  });
  return {left, top: 0, cellWidth: size, cellHeight: height, rows: rows.length, cols};
}

// Draws one row of values over tokens (a query's scores or weights over the keys): a cell per token with its text
// above; masked cells (a Set of indices) crossed out. Returns the geometry for cellAt() (row 0).
export function tokenRow(canvas, values, labels, {width = 600, signed = false, masked = new Set(), marked = -1} = {}) {
  const n = values.length;
  const cell = Math.max(4, Math.min(28, Math.floor(width / Math.max(1, n))));
  const top = 56;
  const height = 22;
  const finite = values.filter((v, i) => !masked.has(i) && Number.isFinite(v));
  const largest = signed ? largestMagnitude(finite) : Math.max(1e-9, ...finite);
  const ctx = prepare(canvas, n * cell, top + height + 2);
  ctx.textBaseline = "middle";
  ctx.textAlign = "left";
  const every = Math.max(1, Math.ceil(12 / cell));
  for (let i = 0; i < n; i++) {
    const x = i * cell;
    if (i % every === 0) {
      ctx.save();
      ctx.translate(x + cell / 2, top - 4);
      ctx.rotate(-Math.PI / 2);
      ctx.fillStyle = i === marked ? "#0b5cad" : "#222";
      ctx.fillText(clip(ctx, labels[i] || "", top - 6), 0, 0);
      ctx.restore();
    }
    if (masked.has(i)) {
      ctx.fillStyle = "#eceff2";
      ctx.fillRect(x, top, cell - 1, height);
      ctx.strokeStyle = "#9aa3ad";
      ctx.lineWidth = 1;
      ctx.beginPath();
      ctx.moveTo(x + 1, top + 1);
      ctx.lineTo(x + cell - 2, top + height - 1);
      ctx.stroke();
    } else {
      ctx.fillStyle = shade(values[i], largest, signed);
      ctx.fillRect(x, top, cell - 1, height);
    }
    if (i === marked) {
      ctx.strokeStyle = "#ff7a00";
      ctx.lineWidth = 2;
      ctx.strokeRect(x + 1, top + 1, cell - 3, height - 2);
    }
  }
  return {left: 0, top, cellWidth: cell, cellHeight: height, rows: 1, cols: n};
}
