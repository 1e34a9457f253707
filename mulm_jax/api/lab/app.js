// The lab's shell: views by URL hash, the model picker, the API key form and the error notice; the views and
// controls shown are those the key's scopes allow (GET /v1/me: an element with data-scopes="a b" shows to a key
// holding one of them).

import {apiKey, get, onUnauthorized} from "./api.js";
import * as compare from "./compare.js";
import * as datasets from "./datasets.js";
import * as embeddings from "./embeddings.js";
import * as inspect from "./inspect.js";
import * as models from "./models.js";
import * as playground from "./playground.js";
import * as tokenizers from "./tokenizers.js";
import * as training from "./training.js";
import * as walkthrough from "./walkthrough.js";

const VIEWS = {playground, inspect, walkthrough, datasets, training, compare, embeddings, tokenizers, models};
const $ = (id) => document.getElementById(id);

export const app = {
  models: [],
  me: null,  // GET /v1/me: the key's name, scopes and quotas (null until read: everything shown)

  may(...scopes) {
    return !app.me || scopes.some((scope) => app.me.scopes.includes(scope));
  },

  async refreshMe() {
    app.me = await get("/v1/me");
    for (const element of document.querySelectorAll("[data-scopes]")) {
      element.hidden = !app.may(...element.dataset.scopes.split(" "));
    }
    $("who").textContent = app.me.name ? `${app.me.name}: ${app.me.scopes.join(", ")}` : "";
    $("who").hidden = !app.me.name;
  },

  model() {
    return $("model").value;
  },

  async refreshModels(select) {
    const previous = select || app.model();
    app.models = (await get("/v1/models")).data;
    $("model").replaceChildren(...app.models.map((m) => new Option(m.id, m.id)));
    if (!app.models.length) $("model").append(new Option("(no model served)", ""));
    if (app.models.some((m) => m.id === previous)) $("model").value = previous;
    return app.models;
  },

  showError(error) {
    const where = [error.status, error.type].filter((part) => part).join(" ");
    $("notice").textContent = (where ? `${where}: ` : "") + error.message;
    $("notice").hidden = false;
  },

  clearError() {
    $("notice").hidden = true;
  },

  // Runs an action, showing its error (the server's message) instead of failing silently.
  async run(action) {
    app.clearError();
    try {
      return await action();
    } catch (error) {
      if (error.name === "AbortError") return undefined;
      app.showError(error);
      return undefined;
    }
  },

  go(view) {
    location.hash = `#${view}`;
  },
};

function allowed(view) {
  return !document.querySelector(`#tabs a[href="#${view}"]`).hidden;
}

function currentView() {
  const name = location.hash.slice(1);
  if (name in VIEWS && allowed(name)) return name;
  return Object.keys(VIEWS).find(allowed);
}

// Shows the view the URL names; body[data-shown] names it once its data is loaded.
function show() {
  const name = currentView();
  delete document.body.dataset.shown;
  for (const view of Object.keys(VIEWS)) $(`view-${view}`).hidden = view !== name;
  for (const link of document.querySelectorAll("#tabs a")) {
    if (link.hash === `#${name}`) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  app.run(() => VIEWS[name].show()).then(() => {
    document.body.dataset.shown = name;
  });
}

function askForKey(message) {
  $("key-message").textContent = message;
  $("key-form").hidden = false;
  $("key-input").value = apiKey.get();
  $("key-input").focus();
}

onUnauthorized((error) => askForKey(`${error.message}. Enter a key this server accepts.`));
$("key-button").addEventListener("click", () => askForKey("The API key sent with every request:"));
$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  apiKey.set($("key-input").value.trim());
  $("key-form").hidden = true;
  app.run(start).then(show);
});

async function start() {
  await app.refreshMe();
  await app.refreshModels();
}

for (const view of Object.values(VIEWS)) view.init(app);
window.addEventListener("hashchange", show);
app.run(start).then(show);
