// The server's choice of the next token, ported from mulm_jax/infer/sampling.py (mask_vocab, apply_penalties,
// filter_logits, choose_tokens) so that the page can reshape one distribution as the learner moves the controls.
// As on the server, the settings, the penalised and tempered logits and the min-p floor are float32 (Math.fround
// after each operation, which rounds as float32 arithmetic does; a division by one value is a product with its
// float32 reciprocal, as XLA computes it on the CPU): equal logits stay equal, so ties at a boundary are kept
// alike. The softmax and the top-p masses are summed in float64 (the server's float32 sums run in XLA's order):
// only a token within ~1e-7 of the top-p boundary could be judged differently.

const f32 = Math.fround;

// Log-softmax of `logits` (-Infinity entries get -Infinity).
export function logSoftmax(logits) {
  let max = -Infinity;
  for (const l of logits) if (l > max) max = l;
  let sum = 0;
  for (const l of logits) if (l > -Infinity) sum += Math.exp(l - max);
  const z = max + Math.log(sum);
  return logits.map((l) => l - z);
}

// mask_vocab: ids from `vocab` on (padded rows of the embedding that no tokenizer piece has) set to -Infinity.
export function maskVocab(logits, vocab) {
  return logits.map((l, i) => (i < vocab ? f32(l) : -Infinity));
}

// apply_penalties' repetition penalty: positive logits of the `seen` ids (the prompt's) divided by `penalty`,
// negative ones multiplied. (Presence and frequency penalties count output tokens only: none before the first.)
export function applyRepetition(logits, seen, penalty) {
  const r = f32(penalty);
  const inverse = f32(1 / r);
  return logits.map((l, i) => (seen.has(i) ? f32(l > 0 ? l * inverse : l * r) : l));
}

// The ids of the `count` largest of values[0..limit), the largest first (ties: the lower id first).
export function largest(values, count, limit = values.length) {
  const best = [];
  for (let i = 0; i < Math.min(limit, values.length); i++) {
    const v = values[i];
    if (best.length === count && !(v > values[best[count - 1]])) continue;
    let at = best.length;
    while (at > 0 && v > values[best[at - 1]]) at -= 1;
    best.splice(at, 0, i);
    if (best.length > count) best.pop();
  }
  return best;
}

function argmax(values) {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

// The whole choice for one position. `logits`: the model's [V]; settings {temperature, topK, topP, minP,
// repetition}; `seen`: a Set of the ids the repetition penalty applies to; `vocab`: the tokenizer's size.
// Returns {model: log-probabilities under the model (what `logprobs` reports: after mask_vocab, before penalties
// and filters), scaled: the penalised, tempered logits, probs: the distribution sampled from (0 for removed ids),
// kept: the ids that can be drawn, removedBy(id): "vocab" | "greedy" | "top-k" | "top-p" | "min-p" | null,
// greedy: temperature 0 (the argmax is taken), floors: {topK, topP, minP} (on the scaled logits)}.
export function choose(logits, settings, seen, vocab) {
  const masked = maskVocab(logits.map((l) => (l === null ? -Infinity : l)), vocab);  // null: NaN in the JSON
  const model = logSoftmax(masked);
  const penalised = f32(settings.repetition) !== 1 ? applyRepetition(masked, seen, settings.repetition) : masked;
  const V = penalised.length;
  const temperature = f32(settings.temperature);
  if (!(temperature > 0)) {  // choose_tokens: greedy rows take the argmax of the penalised logits
    const best = argmax(penalised);
    const probs = new Float64Array(V);
    probs[best] = 1;
    return {model, scaled: penalised, probs, kept: [best], greedy: true, floors: {},
            removedBy: (id) => (id === best ? null : masked[id] === -Infinity ? "vocab" : "greedy")};
  }
  // filter_logits
  const inverse = f32(1 / Math.max(temperature, f32(1e-6)));
  const scaled = penalised.map((l) => f32(l * inverse));
  const sorted = Float64Array.from(scaled).sort().reverse();  // descending; -Infinity last
  const k = settings.topK > 0 ? Math.min(settings.topK, V) : V;
  const kth = sorted[k - 1];
  let max = sorted[0];
  let sum = 0;
  const probs = new Float64Array(V);  // of the top-k distribution, in sorted order
  for (let i = 0; i < V; i++) {
    if (sorted[i] >= kth && sorted[i] > -Infinity) sum += (probs[i] = Math.exp(sorted[i] - max));
  }
  const topP = f32(settings.topP);
  let inNucleus = 0;  // tokens whose more likely tokens' mass is below top_p
  let before = 0;
  for (let i = 0; i < V; i++) {
    const p = probs[i] / sum;
    if (before < topP) inNucleus += 1;
    before += p;
  }
  const nucleusMin = topP < 1 ? sorted[inNucleus - 1] : -Infinity;  // top_p 1 keeps even what rounds to no mass
  const minP = f32(settings.minP);
  const minPFloor = minP > 0 ? f32(max + f32(Math.log(Math.max(minP, f32(1e-30))))) : -Infinity;
  const floor = Math.max(kth, nucleusMin, minPFloor);
  const kept = [];
  for (let i = 0; i < V; i++) if (scaled[i] >= floor && scaled[i] > -Infinity) kept.push(i);
  max = -Infinity;  // (a loop: a vocabulary of 150,000 is too many arguments for Math.max)
  for (const i of kept) max = Math.max(max, scaled[i]);
  const out = new Float64Array(V);
  let total = 0;
  for (const i of kept) total += (out[i] = Math.exp(scaled[i] - max));
  for (const i of kept) out[i] /= total;
  const removedBy = (id) => {
    if (masked[id] === -Infinity) return "vocab";
    if (scaled[id] < kth) return "top-k";
    if (scaled[id] < nucleusMin) return "top-p";
    if (scaled[id] < minPFloor) return "min-p";
    return null;
  };
  return {model, scaled, probs: out, kept, greedy: false, removedBy,
          floors: {topK: settings.topK > 0 ? kth : null, topP: topP < 1 ? nucleusMin : null,
                   minP: minP > 0 ? minPFloor : null}};
}
