// Tokens shown as focusable, shaded spans; picking one (click, Enter or Space) lists its alternatives.

import {surprise, visible} from "./draw.js";

const infos = new WeakMap();

// A token span: `text` as generated, `shade` in [0, 1] (how unexpected), `info` what a pick shows.
export function tokenElement(text, shade, info, title) {
  const span = document.createElement("span");
  span.className = "tok";
  span.tabIndex = 0;
  span.setAttribute("role", "button");
  span.textContent = text;
  span.title = title;
  span.style.backgroundColor = surprise(shade);
  infos.set(span, info);
  return span;
}

// Calls onPick(info, span) when a token inside `container` is clicked or gets Enter / Space.
export function onTokenPick(container, onPick) {
  const pick = (event) => {
    const span = event.target.closest(".tok");
    if (!span || !container.contains(span)) return;
    event.preventDefault();
    for (const other of container.querySelectorAll(".tok[aria-pressed]")) other.removeAttribute("aria-pressed");
    span.setAttribute("aria-pressed", "true");
    onPick(infos.get(span), span);
  };
  container.addEventListener("click", pick);
  container.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") pick(event);
  });
}

// Fills `panel` with a heading and a list of alternatives [{text, prob}], the `chosen` text marked, and what
// the listed ones leave to all other tokens.
export function showAlternatives(panel, heading, alternatives, chosen) {
  const title = document.createElement("h3");
  title.textContent = heading;
  const list = document.createElement("ol");
  list.className = "alternatives";
  for (const {text, prob} of alternatives) {
    const item = document.createElement("li");
    item.dataset.prob = String(prob);
    if (text === chosen) item.className = "chosen";
    const label = document.createElement("code");
    label.textContent = visible(text);
    const meter = document.createElement("meter");
    meter.min = 0;
    meter.max = 1;
    meter.value = prob;
    const value = document.createElement("span");
    value.textContent = `${(100 * prob).toFixed(1)}%`;
    item.append(label, meter, value);
    list.append(item);
  }
  const rest = document.createElement("p");
  const listed = alternatives.reduce((sum, a) => sum + a.prob, 0);
  rest.textContent = `All other tokens: ${(100 * Math.max(0, 1 - listed)).toFixed(1)}%`;
  panel.replaceChildren(title, list, rest);
  panel.hidden = false;
}
