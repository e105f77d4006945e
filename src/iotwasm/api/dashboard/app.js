// The iotwasm node dashboard: signs in with a token, follows the node's live stream
// (/v1/stream: history, a sample per interval, events, fleet views) and shows it in views, one
// module each. Lists (deployments, routes, rules, alerts) are read once and again when an event
// says something changed — nothing is polled. Operators get buttons for actions; viewers none.

import {$, clock} from "./dom.js";
import {Api, Stream, describe} from "./api.js";
import {installDialog, notify} from "./actions.js";
import * as overview from "./overview.js";
import * as pipelines from "./pipelines.js";
import * as objects from "./objects.js";
import * as rules from "./rules.js";
import * as deadletters from "./deadletters.js";
import * as events from "./events.js";
import * as fleet from "./fleet.js";

const KEY = "iotwasm.token";    // sessionStorage: this tab only, gone when it closes
const VIEW = "iotwasm.view";
const FULL_KEPT = 30;           // full samples kept for "is it rising" questions

const modules = {overview, pipelines, deployments: objects.deployments, routes: objects.routes, rules,
                 deadletters, events, fleet};
let ctx = null;

function setBanner(msg) {
  const b = $("banner");
  b.textContent = msg || "";
  b.hidden = !msg;
}

function status(s, detail) {
  const dot = $("live");
  dot.className = `dot ${s === "live" ? "ok" : s === "refused" ? "bad" : "warn"}`;
  dot.title = detail || s;
  $("status").textContent = s === "live" ? (ctx && ctx.current ? `live · ${clock(ctx.current.t)}` : "live") : s;
}

function newContext(api) {
  return {
    api, you: null, canOperate: false, node: null,
    samples: [], full: [], current: null, interval: 1, keep: 600, inFleet: false,
    lists: {deployments: [], routes: [], rules: [], alerts: [], events: []},
    fleet: null, stream: null, views: {}, view: null, timer: null, generation: 0,
    setBanner,
    // the charts' window: what the samples cover, at least a minute, at most what is kept
    span() {
      const first = this.samples[0], last = this.samples[this.samples.length - 1];
      const age = first && last ? last.t - first.t : 0;
      return Math.min(this.keep * this.interval, Math.max(60, Math.ceil(age / 60) * 60));
    },
    refresh() { scheduleRefresh(this, 0); },
    show(name, opts) { showView(this, name, opts); },
  };
}

async function loadLists(c) {
  const gen = c.generation;
  const paths = {deployments: "/v1/deployments", routes: "/v1/routes", rules: "/v1/rules", alerts: "/v1/alerts",
                 node: "/v1/node"};
  const answers = await Promise.all(Object.entries(paths).map(async ([k, p]) => [k, await c.api.get(p)]));
  if (gen !== c.generation) return;
  const problems = [];
  for (const [k, res] of answers) {
    if (res.status === 401) { signedOut(res.detail); return; }
    if (!res.ok) { problems.push(describe(res)); continue; }
    if (k === "node") { c.node = res.body; c.nodeReadAt = Date.now(); }
    else c.lists[k] = Array.isArray(res.body) ? res.body : [];
  }
  setBanner(problems[0] || "");
  render(c, "lists");
}

function scheduleRefresh(c, delay = 250) {
  clearTimeout(c.timer);
  c.timer = setTimeout(() => loadLists(c), delay);
}

function render(c, why) {
  const v = c.views[c.view];
  if (!v) return;
  try {
    v.render(why);
  } catch (e) {   // a bug in one view must not stop the page: say it and keep going
    setBanner(`dashboard error in ${c.view}: ${e && e.message ? e.message : e}`);
  }
}

function onStream(c, kind, doc) {
  if (kind === "hello") {
    c.interval = doc.interval_s || 1;
    c.keep = doc.keep || 600;
    c.inFleet = !!doc.fleet;
    $("tab-fleet").hidden = !c.inFleet;
    if (!c.inFleet && c.view === "fleet") showView(c, "overview");
  } else if (kind === "history") {
    c.samples = expand(doc);
    render(c, "history");
  } else if (kind === "sample") {
    c.current = doc;
    c.full.push(doc);
    if (c.full.length > FULL_KEPT) c.full.shift();
    const last = c.samples[c.samples.length - 1];
    if (!last || doc.t > last.t) c.samples.push(doc);
    if (c.samples.length > c.keep) c.samples.splice(0, c.samples.length - c.keep);
    status("live");
    render(c, "sample");
  } else if (kind === "event") {
    c.lists.events.unshift(doc);
    c.lists.events.length = Math.min(c.lists.events.length, 200);
    scheduleRefresh(c);   // something changed: read the lists again (debounced)
    render(c, "event");
  } else if (kind === "fleet") {
    c.fleet = doc;
    render(c, "fleet");
  }
}

// The history comes as columns (one list per series); the page holds samples, as the live ones come.
function expand(h) {
  const t = Array.isArray(h.t) ? h.t : [];
  const pick = (cols, k) => Object.fromEntries(Object.entries(cols || {}).flatMap(([name, series]) => {
    const v = Object.fromEntries(Object.entries(series).map(([s, vals]) => [s, vals[k]]));
    return Object.values(v).some((x) => x !== null) ? [[name, v]] : [];
  }));
  return t.map((ts, k) => ({t: ts, node: Object.fromEntries(Object.entries(h.node || {}).map(([s, vals]) => [s, vals[k]])),
                            routes: pick(h.routes, k), deployments: pick(h.deployments, k)}));
}

function showView(c, name, opts) {
  if (!modules[name] || (name === "fleet" && !c.inFleet)) name = "overview";
  c.view = name;
  sessionStorage.setItem(VIEW, name);
  for (const b of document.querySelectorAll("#tabs button")) b.setAttribute("aria-selected", String(b.dataset.view === name));
  for (const s of document.querySelectorAll("main > .view")) s.hidden = s.id !== `view-${name}`;
  if (!c.views[name]) c.views[name] = modules[name].create(c, $(`view-${name}`));
  if (opts && c.views[name].open) c.views[name].open(opts);
  render(c, "shown");
}

async function signedIn(token) {
  if (ctx) { ctx.generation += 1; ctx.stream?.close(); clearTimeout(ctx.timer); }
  const c = ctx = newContext(new Api(token));
  sessionStorage.setItem(KEY, token);
  $("token-form").hidden = true;
  $("status").textContent = "signing in…";
  setBanner("");
  const me = await c.api.get("/v1/node");
  if (c !== ctx) return;
  if (!me.ok) {
    if (me.status === 401 || me.status === 403) { signedOut(me.detail); return; }
    setBanner(describe(me));
  }
  c.node = me.body || {};
  c.nodeReadAt = Date.now();
  c.you = c.node.you || {};
  c.canOperate = c.you.role === "operator" || c.you.role === "admin";
  document.body.classList.toggle("can-operate", c.canOperate);
  $("node-name").textContent = typeof c.node.name === "string" ? c.node.name : "";
  document.title = `iotwasm · ${c.node.name || "node"}`;
  $("whoami").textContent = c.you.name ? `${c.you.name} · ${c.you.role}${c.you.tenant ? " · tenant " + c.you.tenant : ""}` : "";
  $("dashboard").hidden = false;
  $("signout").hidden = false;
  showView(c, sessionStorage.getItem(VIEW) || "overview");
  loadLists(c);
  c.api.get("/v1/events?limit=50").then((res) => {
    if (c === ctx && res.ok && Array.isArray(res.body)) {
      const live = c.lists.events;
      c.lists.events = [...live, ...res.body.filter((e) => !live.some((l) => l.ts === e.ts && l.message === e.message))];
      render(c, "event");
    }
  });
  c.stream = new Stream(c.api, (kind, doc) => { if (c === ctx) onStream(c, kind, doc); },
                        (s, detail) => {
                          if (c !== ctx) return;
                          if (s === "refused") signedOut(detail);
                          else status(s, detail);
                        }).open();
}

function signedOut(why) {
  if (ctx) { ctx.generation += 1; ctx.stream?.close(); clearTimeout(ctx.timer); }
  ctx = null;
  sessionStorage.removeItem(KEY);
  document.body.classList.remove("can-operate");
  $("dashboard").hidden = true;
  $("signout").hidden = true;
  $("token-form").hidden = false;
  $("status").textContent = "not signed in";
  $("live").className = "dot";
  $("node-name").textContent = "";
  $("whoami").textContent = "";
  notify("");
  for (const s of document.querySelectorAll("main > .view")) s.replaceChildren();
  setBanner(why || "");
  $("token-input").focus();
}

// The fragment (#token=…) never reaches a server; take the token out of the address bar at
// once so it does not stay in the history, in bookmarks or on a shared screen.
function tokenFromFragment() {
  const h = location.hash.replace(/^#/, "");
  if (!h) return null;
  const t = new URLSearchParams(h).get("token");
  history.replaceState(null, "", location.pathname + location.search);
  return t && t.trim() ? t.trim() : null;
}

function start() {
  installDialog();
  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const t = $("token-input").value.trim();
    $("token-input").value = "";
    if (t) signedIn(t);
  });
  $("signout").addEventListener("click", () => signedOut(""));
  for (const b of document.querySelectorAll("#tabs button")) {
    b.addEventListener("click", () => { if (ctx) showView(ctx, b.dataset.view); });
  }
  window.addEventListener("hashchange", () => {   // a new link pasted into this tab
    const t = tokenFromFragment();
    if (t) signedIn(t);
  });
  const t = tokenFromFragment() || sessionStorage.getItem(KEY);
  if (t) signedIn(t);
  else signedOut("");
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
else start();
