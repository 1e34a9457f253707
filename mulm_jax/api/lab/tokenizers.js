// Tokenizers: one text under two to four tokenizers (POST /v1/tokenizers/compare): each one's tokens as chips of
// alternating shade (the id and the vocabulary's piece on hover), the words it splits underlined, characters per
// token, and the merges that built a picked piece (BPE).

import {asCurl, post} from "./api.js";
import {visible} from "./draw.js";
import {table} from "./tables.js";
import {onTokenPick, tokenElement} from "./tokens.js";

const $ = (id) => document.getElementById(id);
const MIN_PICKERS = 2;
const MAX_PICKERS = 4;  // the route's limit (MAX_COMPARED)
const CHAR = "char";
const PATH = "path";
const MODEL = "model:";  // an option's value for a served model: the prefix, then its id
let app;

export function init(lab) {
  app = lab;
  $("tk-form").addEventListener("submit", (event) => {
    event.preventDefault();
    app.run(compare);
  });
  $("tk-add").addEventListener("click", () => addPicker(PATH));
}

export async function show() {
  if (!pickers().length) {
    const first = app.models.length ? MODEL + app.models[0].id : PATH;
    addPicker(CHAR);
    addPicker(first);
  }
  for (const picker of pickers()) fillChoices(picker.querySelector("select"));
  if (specs().length) await compare();
}

function pickers() {
  return [...document.querySelectorAll("#tk-pickers .tk-picker")];
}

// One picker: a choice of served model, char or a typed path, and a button that removes it (down to two).
function addPicker(choice) {
  if (pickers().length >= MAX_PICKERS) return;
  const index = pickers().length;
  const picker = document.createElement("div");
  picker.className = "tk-picker";
  const select = document.createElement("select");
  select.id = `tk-spec-${index}`;
  select.setAttribute("aria-label", `tokenizer ${index + 1}`);
  const path = document.createElement("input");
  path.type = "text";
  path.id = `tk-path-${index}`;
  path.placeholder = "e.g. runs/shakespeare or sp.model";
  path.spellcheck = false;
  path.setAttribute("aria-label", `tokenizer ${index + 1}: path`);
  const remove = document.createElement("button");
  remove.type = "button";
  remove.textContent = "×";
  remove.title = "remove this tokenizer";
  remove.addEventListener("click", () => {
    if (pickers().length > MIN_PICKERS) picker.remove();
    renumber();
  });
  select.addEventListener("change", () => {
    path.hidden = select.value !== PATH;
  });
  picker.append(select, path, remove);
  $("tk-pickers").append(picker);
  fillChoices(select, choice);
  path.hidden = select.value !== PATH;
  renumber();
}

function renumber() {
  pickers().forEach((picker, i) => {
    picker.querySelector("select").id = `tk-spec-${i}`;
    picker.querySelector("input").id = `tk-path-${i}`;
    picker.querySelector("button").disabled = pickers().length <= MIN_PICKERS;
  });
  $("tk-add").disabled = pickers().length >= MAX_PICKERS;
}

// The served models (as now), char and "a path", keeping the choice made.
function fillChoices(select, choice = select.value) {
  const options = app.models.map((m) => new Option(`model ${m.id}`, MODEL + m.id));
  options.push(new Option("char (the text's characters)", CHAR), new Option("a path…", PATH));
  select.replaceChildren(...options);
  select.value = options.some((o) => o.value === choice) ? choice : PATH;
}

function specs() {
  return pickers().map((picker) => {
    const value = picker.querySelector("select").value;
    if (value.startsWith(MODEL)) return value.slice(MODEL.length);
    return value === CHAR ? CHAR : picker.querySelector("input").value.trim();
  }).filter((spec) => spec);
}

async function compare() {
  const body = {text: $("tk-text").value, tokenizers: specs()};
  $("tk-rows").dataset.state = "running";
  const answer = await post("/v1/tokenizers/compare", body);
  $("tk-curl").textContent = asCurl("POST", "/v1/tokenizers/compare", body);
  table($("tk-summary"), ["tokenizer", "kind", "vocabulary", "tokens", "chars / token", "split words"],
        answer.tokenizers.map((t) => [t.name, kind(t), t.vocab_size.toLocaleString(),
                                      t.tokens.length, perToken(t), t.split_words.length]),
        "no tokenizer");
  const text = [...answer.text];  // offsets count characters (code points), as Python does
  $("tk-rows").replaceChildren(...answer.tokenizers.map((t) => row(t, text)));
  $("tk-result").hidden = false;
  $("tk-rows").dataset.state = "done";
}

// "char", or the kind with its algorithm: "sentencepiece bpe", "hf wordpiece".
function kind(t) {
  return t.kind === t.algorithm ? t.kind : `${t.kind} ${t.algorithm}`;
}

function perToken(t) {
  return t.chars_per_token === null ? "—" : t.chars_per_token.toFixed(2);
}

// A tokenizer's panel: its heading, its tokens as chips (with any text no token covers between them), and the
// merges of the piece picked.
function row(t, text) {
  const panel = document.createElement("div");
  panel.className = "panel tk-row";
  panel.dataset.name = t.name;
  panel.dataset.count = String(t.tokens.length);
  panel.dataset.splitWords = String(t.split_words.length);
  const title = document.createElement("h2");
  title.textContent = t.name;
  const about = document.createElement("span");
  about.className = "status";
  about.textContent = ` ${kind(t)}, vocabulary ${t.vocab_size.toLocaleString()}: ` +
    `${t.tokens.length} tokens, ${perToken(t)} characters a token, ${t.split_words.length} words split`;
  title.append(about);
  const inWord = new Map();
  t.split_words.forEach((word, w) => word.tokens.forEach((i) => inWord.set(i, w)));
  const chips = document.createElement("div");
  chips.className = "tokens tk-chips";
  let end = 0;
  t.tokens.forEach((token, i) => {
    if (token.start > end) chips.append(gap(text.slice(end, token.start).join("")));
    const shown = visible(token.text).replaceAll("↵", "↵\n");  // a newline shown, and kept
    const chip = tokenElement(shown, 0, {token, merges: t.merges, algorithm: t.algorithm},
                              `id ${token.id} · piece ${token.piece} · characters ${token.start}–${token.end}`);
    chip.style.backgroundColor = "";  // the shade is the class's: alternating
    chip.classList.add(i % 2 ? "tk-odd" : "tk-even");
    chip.dataset.id = String(token.id);
    if (inWord.has(i)) {
      chip.classList.add("tk-split");
      chip.dataset.word = String(inWord.get(i));
    }
    chips.append(chip);
    end = token.end;
  });
  if (end < text.length) chips.append(gap(text.slice(end).join("")));
  const merges = document.createElement("div");
  merges.className = "detail tk-merges";
  merges.hidden = true;
  onTokenPick(chips, (info) => showMerges(merges, info));
  panel.append(title, chips, merges);
  return panel;
}

// Text that no token covers (whitespace a pre-tokenizer drops, say).
function gap(text) {
  const span = document.createElement("span");
  span.className = "tk-gap";
  span.textContent = text;
  span.title = "no token covers this text";
  return span;
}

function showMerges(panel, {token, merges, algorithm}) {
  const heading = document.createElement("h3");
  heading.textContent = `“${visible(token.text)}”: id ${token.id}, piece ${token.piece}`;
  panel.dataset.id = String(token.id);
  const steps = merges && merges[String(token.id)];
  if (!steps) {
    const note = document.createElement("p");
    note.className = "status";
    note.textContent = merges === null
      ? `A ${algorithm} tokenizer does not build its pieces by merges.`
      : "No merges: a single character, a byte, or a piece BPE does not build from its characters.";
    panel.replaceChildren(heading, note);
  } else {
    const list = document.createElement("ol");
    list.className = "tk-merge-list";
    for (const [left, right, made] of steps) {
      const item = document.createElement("li");
      const code = document.createElement("code");
      code.textContent = `${left} + ${right} → ${made}`;
      item.append(code);
      list.append(item);
    }
    panel.replaceChildren(heading, list);
  }
  panel.dataset.merges = String(steps ? steps.length : 0);
  panel.hidden = false;
}
