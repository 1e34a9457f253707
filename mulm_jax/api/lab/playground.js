// Playground: completions and chat streamed from /v1/completions and /v1/chat/completions, each token shaded
// by its probability; picking a token lists the model's top alternatives at that step.

import {asCurl, stream} from "./api.js";
import {visible} from "./draw.js";
import {onTokenPick, showAlternatives, tokenElement} from "./tokens.js";

const $ = (id) => document.getElementById(id);
const TOP_LOGPROBS = 5;
let app;
let controller = null;
let messages = [];

export function init(lab) {
  app = lab;
  $("pg-form").addEventListener("submit", (event) => {
    event.preventDefault();
    generate();
  });
  $("pg-prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      generate();
    }
  });
  $("pg-cancel").addEventListener("click", () => controller && controller.abort());
  $("pg-clear").addEventListener("click", clear);
  for (const radio of document.querySelectorAll("input[name=pg-mode]")) radio.addEventListener("change", clear);
  $("model").addEventListener("change", fitMaxTokens);
  for (const container of [$("pg-output"), $("pg-chat")]) {
    onTokenPick(container, (info) => showAlternatives(
      $("pg-detail"), `“${visible(info.text)}”: p = ${(100 * Math.exp(info.logprob)).toFixed(1)}% ` +
        `(log p ${info.logprob.toFixed(3)}); the model's top ${info.top.length} at this step:`,
      info.top.map((t) => ({text: t.text, prob: Math.exp(t.logprob)})), info.text));
  }
}

export function show() {
  fitMaxTokens();
}

// The prompt and its completion share the model's context: max tokens is kept to half of it (the demo model's
// context is 64 tokens, less than the field's default), so that Generate with the defaults is a request it can take.
function fitMaxTokens() {
  const model = app.models.find((m) => m.id === app.model());
  if (!model) return;
  const field = $("pg-max-tokens");
  field.max = String(model.context_length - 1);
  const half = Math.max(1, Math.floor(model.context_length / 2));
  if (Number(field.value) > half) field.value = String(half);
}

function chatMode() {
  return document.querySelector("input[name=pg-mode]:checked").value === "chat";
}

function clear() {
  messages = [];
  $("pg-output").replaceChildren();
  $("pg-chat").replaceChildren();
  $("pg-chat").hidden = !chatMode();
  $("pg-output").hidden = chatMode();
  $("pg-prompt-label").textContent = chatMode() ? "Your message" : "Prompt";
  $("pg-detail").hidden = true;
  $("pg-status").textContent = "";
}

function number(id) {
  const value = $(id).value.trim();
  return value === "" ? undefined : Number(value);
}

// The sampling fields of the request, as the API names them (unset ones left out).
function sampling() {
  const stop = $("pg-stop").value.split("|").map((s) => s.trim().replaceAll("\\n", "\n").replaceAll("\\t", "\t"))
    .filter((s) => s);
  return {
    max_tokens: number("pg-max-tokens"), temperature: number("pg-temperature"), top_k: number("pg-top-k"),
    top_p: number("pg-top-p"), min_p: number("pg-min-p"), repetition_penalty: number("pg-repetition"),
    seed: number("pg-seed"), stop: stop.length ? stop : undefined,
  };
}

// [{text, logprob, top: [{text, logprob}]}], one per token of a streamed chunk (a chunk carries every token the
// server had pending), from either route's logprobs format.
function tokenInfos(logprobs) {
  if (!logprobs) return [];
  if (logprobs.content) {
    return logprobs.content.map((entry) => ({text: entry.token, logprob: entry.logprob,
                                             top: entry.top_logprobs.map((t) => ({text: t.token, logprob: t.logprob}))}));
  }
  return logprobs.tokens.map((text, i) => ({text, logprob: logprobs.token_logprobs[i],
    top: Object.entries(logprobs.top_logprobs[i]).map(([t, logprob]) => ({text: t, logprob}))}));
}

function chatEntry(role, text) {
  const entry = document.createElement("div");
  entry.className = `message ${role}`;
  const who = document.createElement("strong");
  who.textContent = `${role}: `;
  const body = document.createElement("span");
  body.className = "tokens";
  body.textContent = text;
  entry.append(who, body);
  $("pg-chat").append(entry);
  return body;
}

async function generate() {
  if (controller) return;
  const chat = chatMode();
  const prompt = $("pg-prompt").value;
  const body = {model: app.model(), ...sampling(), stream: true};
  let out;
  let path;
  if (chat) {
    path = "/v1/chat/completions";
    Object.assign(body, {messages: [...messages, {role: "user", content: prompt}], logprobs: true,
                         top_logprobs: TOP_LOGPROBS});
    chatEntry("user", prompt);
    out = chatEntry("assistant", "");
  } else {
    path = "/v1/completions";
    Object.assign(body, {prompt, logprobs: TOP_LOGPROBS});
    const shown = document.createElement("span");
    shown.className = "prompt";
    shown.textContent = prompt;
    out = $("pg-output");
    out.replaceChildren(shown);
  }
  $("pg-curl").textContent = asCurl("POST", path, body);
  $("pg-output").dataset.request = JSON.stringify({path, body});
  $("pg-detail").hidden = true;
  const status = $("pg-status");
  status.textContent = "streaming…";
  status.dataset.state = "streaming";
  controller = new AbortController();
  $("pg-run").disabled = true;
  $("pg-cancel").disabled = false;
  const started = performance.now();
  let generated = "";
  let tokens = 0;
  let finish = null;
  let finished = false;
  await app.run(async () => {
    await stream("POST", path, body, ({data}) => {
      const choice = data.choices && data.choices[0];
      if (!choice) return;  // [DONE], or the usage chunk
      const text = (chat ? choice.delta.content : choice.text) || "";
      const infos = tokenInfos(choice.logprobs);
      if (infos.length) {
        // each token shows its own piece; should the pieces not spell the chunk's text, the last shows it whole
        const spelled = infos.map((info) => info.text).join("") === text;
        infos.forEach((info, i) => {
          const p = Math.exp(info.logprob);
          const piece = spelled ? info.text : i === infos.length - 1 ? text : "";
          out.append(tokenElement(piece, 1 - p, info, `p = ${(100 * p).toFixed(1)}%`));
        });
        tokens += infos.length;
      } else if (text) {
        out.append(text);
      }
      generated += text;
      finish = choice.finish_reason || finish;
    }, controller.signal);
    finished = true;
  });
  const seconds = (performance.now() - started) / 1000;
  const stopped = controller.signal.aborted;
  controller = null;
  $("pg-run").disabled = false;
  $("pg-cancel").disabled = true;
  if (chat && finished) {
    messages.push({role: "user", content: prompt}, {role: "assistant", content: generated});
    $("pg-prompt").value = "";
  }
  status.dataset.state = finished ? "done" : stopped ? "stopped" : "failed";
  status.textContent = `${status.dataset.state}: ${tokens} tokens in ${seconds.toFixed(2)} s` +
    (finish ? `, finish reason: ${finish}` : "");
}
