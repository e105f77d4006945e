// The iotwasm node dashboard: reads the management API every two seconds and shows what it
// says. It only reads. Every value reaches the page as text (textContent, never HTML), a
// missing field shows as "–", and any error is shown in the banner with the API's own
// `detail` line.
"use strict";

(() => {
  const KEY = "iotwasm.token";   // sessionStorage: this tab only, gone when it closes
  const POLL_MS = 2000;
  const OK = new Set(["running", "enabled", "ok", "serving", "succeeded", "ready", "connected", "up"]);
  const BAD = new Set(["error", "failed", "terminated", "rolled-back", "aborted", "crashed",
                       "unhealthy", "disconnected", "not ready"]);
  const WARN = new Set(["pending", "suspended", "paused", "progressing", "disabled", "created", "loaded",
                        "instantiated", "superseded"]);

  let token = null;
  let timer = null;
  let generation = 0;        // a refresh started before a sign-out or a new token is discarded

  const $ = (id) => document.getElementById(id);

  // -- building the page without HTML strings -------------------------------------------
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== undefined && v !== null) e.setAttribute(k, String(v));
    }
    for (const c of children) {
      if (c === undefined || c === null) continue;
      e.append(c instanceof Node ? c : String(c));   // a string becomes a text node
    }
    return e;
  }

  function text(v) {
    if (v === undefined || v === null || v === "") return "–";
    if (Array.isArray(v)) return v.length ? v.map(text).join(", ") : "–";
    if (typeof v === "object") {
      const parts = Object.entries(v).map(([k, x]) => `${k} ${text(x)}`);
      return parts.length ? parts.join(", ") : "–";
    }
    return String(v);
  }

  function num(v) {
    return typeof v === "number" && Number.isFinite(v) ? v.toLocaleString("en-US") : "–";
  }

  function ms(v) {
    return typeof v === "number" && Number.isFinite(v) ? v.toFixed(2) : "–";
  }

  function duration(s) {
    if (typeof s !== "number" || !Number.isFinite(s)) return "–";
    s = Math.max(0, Math.floor(s));
    const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
    if (d) return `${d}d ${h}h`;
    if (h) return `${h}h ${m}m`;
    if (m) return `${m}m ${s % 60}s`;
    return `${s}s`;
  }

  function clock(ts) {
    if (typeof ts !== "number" || !Number.isFinite(ts)) return "–";
    const t = new Date(ts * 1000);
    return t.toLocaleDateString() === new Date().toLocaleDateString() ? t.toLocaleTimeString() : t.toLocaleString();
  }

  function badge(state) {
    const s = text(state);
    const cls = OK.has(s) ? "ok" : BAD.has(s) ? "bad" : WARN.has(s) ? "warn" : (s.includes("not") ? "bad" : "");
    return el("span", {class: `badge ${cls}`.trim()}, s);
  }

  // cols: [{key, label, get(row), num: bool}]; get may return a Node, else text is made of it
  function table(cols, rows, empty) {
    if (!Array.isArray(rows) || rows.length === 0) return el("p", {class: "empty"}, empty);
    const head = el("tr", null, ...cols.map((c) => el("th", {class: c.num ? "num" : null}, c.label)));
    const body = rows.map((r) => {
      const row = r && typeof r === "object" ? r : {};
      return el("tr", {"data-name": row.name ?? row.id ?? row.deployment ?? null}, ...cols.map((c) => {
        let v;
        try { v = c.get(row); } catch (e) { v = undefined; }
        return el("td", {class: c.num ? "num" : null, "data-col": c.key},
                  v instanceof Node ? v : (c.num && typeof v !== "string" ? num(v) : text(v)));
      }));
    });
    return el("table", null, el("thead", null, head), el("tbody", null, ...body));
  }

  const col = (key, label, extra) => ({key, label, get: (r) => r[key], ...extra});
  const numCol = (key, label) => col(key, label, {num: true});

  function summary(target, pairs) {
    target.replaceChildren(...pairs.map(([k, v]) => el("div", null, el("dt", null, k),
                                                         el("dd", null, v instanceof Node ? v : text(v)))));
  }

  // -- talking to the API ------------------------------------------------------------------
  async function api(path) {
    let r;
    try {
      r = await fetch(path, {headers: {Authorization: `Bearer ${token}`, Accept: "application/json"},
                             cache: "no-store", credentials: "omit", redirect: "error"});
    } catch (e) {
      return {path, status: 0, body: null, detail: `cannot reach the node (${e.message || e})`};
    }
    let body = null;
    try { body = await r.json(); } catch (e) { body = null; }
    const detail = body && typeof body.detail === "string" ? body.detail
      : (r.ok ? "" : `HTTP ${r.status}${r.statusText ? " " + r.statusText : ""}`);
    return {path, status: r.status, ok: r.ok, body, detail};
  }

  function describe(res) {
    return res.status ? `GET ${res.path}: ${res.status} — ${res.detail}` : `GET ${res.path}: ${res.detail}`;
  }

  // -- the panels ---------------------------------------------------------------------------
  function showNode(n) {
    const ready = n.readiness && typeof n.readiness === "object" ? n.readiness : {};
    const you = n.you && typeof n.you === "object" ? n.you : {};
    $("node-name").textContent = typeof n.name === "string" ? n.name : "";
    document.title = `iotwasm · ${text(n.name)}`;
    summary($("node-summary"), [
      ["node", n.name], ["version", n.version], ["up", duration(n.uptime_s)], ["bus", n.bus],
      ["readiness", badge(ready.ready === true ? "ready" : ready.ready === false ? "not ready" : undefined)],
      ["deployments", num(n.deployments)], ["routes", num(n.routes)],
      ["outbox backlog", num(n.outbox_backlog)], ["manifests", n.manifests],
      ["signed in as", `${text(you.name)} (${text(you.role)}${you.tenant ? ", tenant " + you.tenant : ""})`],
    ]);
    const reasons = Array.isArray(ready.reasons) ? ready.reasons : [];
    const panel = $("node-summary").parentElement;
    panel.querySelector(".problems")?.remove();
    if (reasons.length) panel.append(el("ul", {class: "problems"}, ...reasons.map((x) => el("li", null, text(x)))));
  }

  function showDeployments(rows) {
    $("deployments").replaceChildren(table([
      col("name", "deployment"), col("namespace", "namespace"),
      col("state", "state", {get: (r) => badge(r.state)}),
      numCol("revision", "rev"), numCol("replicas", "replicas"), numCol("messages", "messages"),
      numCol("outputs", "outputs"), numCol("dead_letters", "dead letters"),
      col("errors", "errors"), numCol("restarts", "restarts"), numCol("rollbacks", "rollbacks"),
      col("last_error", "last error"),
    ], rows, "no deployments"));
  }

  function showRoutes(rows) {
    $("routes").replaceChildren(table([
      col("name", "route"), col("state", "state", {get: (r) => badge(r.state)}),
      col("source", "source"), col("steps", "steps"), col("sinks", "sinks"),
      numCol("received", "received"), numCol("delivered", "delivered"),
      numCol("dead_letters", "dead letters"), numCol("dropped", "dropped"), numCol("queued", "queued"),
      col("p50_ms", "p50 ms", {num: true, get: (r) => ms(r.p50_ms)}),
      col("p99_ms", "p99 ms", {num: true, get: (r) => ms(r.p99_ms)}),
    ], rows, "no routes"));
  }

  function showRules(rows) {
    $("rules").replaceChildren(table([
      col("name", "rule"), col("state", "state", {get: (r) => badge(r.state)}), col("tags", "tags"),
      numCol("received", "received"), numCol("matched", "matched"), numCol("emitted", "emitted"),
      numCol("errors", "errors"), numCol("open_windows", "open windows"), col("last_error", "last error"),
    ], rows, "no rules"));
  }

  function showEvents(rows) {
    $("events").replaceChildren(table([
      col("ts", "time", {get: (r) => clock(r.ts)}), col("kind", "kind"), col("object", "object"),
      col("message", "message"),
    ], rows, "no events yet"));
  }

  function showFleetDeployments(res) {
    const count = (v) => (Array.isArray(v) ? v.length : undefined);
    $("fleet-deployments").replaceChildren(res.ok ? table([
      col("name", "deployment"), numCol("revision", "revision"),
      col("module", "module", {get: (r) => (typeof r.module === "string" ? r.module.slice(0, 19) : undefined)}),
      col("copies", "running / assigned / wanted", {get: (r) =>
        `${num(count(r.running))} / ${num(count(r.assigned))} / ${num(r.wanted)}`}),
      col("rollout", "rollout", {get: (r) => (r.rollout && typeof r.rollout === "object"
        ? el("span", null, badge(r.rollout.state), r.rollout.stage ? ` ${r.rollout.stage}` : "") : undefined)}),
      col("problems", "problems"),
    ], res.body, "no fleet deployments") : el("p", {class: "empty"}, describe(res)));
  }

  function showFleet(f, nodes, rollouts) {
    const copies = f.copies && typeof f.copies === "object" ? f.copies : {};
    const ro = f.rollouts && typeof f.rollouts === "object" ? f.rollouts : {};
    summary($("fleet-summary"), [
      ["fleet", f.url], ["this node", f.node], ["link", badge(f.connected === true ? "connected" : undefined)],
      ["nodes", num(f.nodes)], ["deployments", num(f.deployments)],
      ["copies running / wanted", `${num(copies.running)} / ${num(copies.wanted)}`],
      ["rollouts progressing", num(ro.progressing)], ["rollouts paused", num(ro.paused)],
      ["assignment revision", f.assignment_revision],
    ]);
    const panel = $("fleet-summary").parentElement;
    panel.querySelector(".problems")?.remove();
    const problems = Array.isArray(f.problems) ? f.problems : [];
    if (problems.length) $("fleet-summary").after(el("ul", {class: "problems"}, ...problems.map((p) => el("li", null, text(p)))));
    $("fleet-nodes").replaceChildren(nodes.ok ? table([
      col("id", "node"), col("health", "health", {get: (r) => badge(r.health)}), col("labels", "labels"),
      col("running", "running"), col("assigned", "assigned"), numCol("assignment_revision", "assignment rev"),
      col("heartbeat_age_s", "heartbeat", {get: (r) => (typeof r.heartbeat_age_s === "number" ? `${r.heartbeat_age_s}s ago` : undefined)}),
    ], nodes.body, "no live nodes") : el("p", {class: "empty"}, describe(nodes)));
    $("fleet-rollouts").replaceChildren(rollouts.ok ? table([
      col("deployment", "deployment"), numCol("revision", "revision"),
      col("state", "state", {get: (r) => badge(r.state)}),
      col("stage", "stage", {get: (r) => (typeof r.stage === "number" && typeof r.stages === "number" ? `${r.stage + 1} of ${r.stages}` : undefined)}),
      col("updated", "updated nodes"), col("failed", "failed nodes", {get: (r) => (r.failed && typeof r.failed === "object" ? Object.keys(r.failed) : undefined)}),
      col("reason", "reason"),
    ], rollouts.body, "no rollouts") : el("p", {class: "empty"}, describe(rollouts)));
  }

  // -- one refresh --------------------------------------------------------------------------
  async function refresh() {
    const gen = generation;
    const paths = ["/v1/node", "/v1/deployments", "/v1/routes", "/v1/rules", "/v1/events?limit=20", "/v1/fleet"];
    const [node, deps, routes, rules, events, fleet] = await Promise.all(paths.map(api));
    if (gen !== generation) return;
    if (node.status === 401 || node.status === 403) {    // the token itself is refused: ask for another
      signedOut(describe(node));
      return;
    }
    const problems = [];
    const show = (res, fn) => {
      if (res.ok && Array.isArray(res.body)) fn(res.body);
      else if (res.ok) fn([]);
      else problems.push(describe(res));
    };
    if (node.ok && node.body && typeof node.body === "object") showNode(node.body);
    else problems.push(describe(node));
    show(deps, showDeployments);
    show(routes, showRoutes);
    show(events, showEvents);
    $("rules-panel").hidden = rules.status === 404;   // a node without the rules API
    if (rules.status !== 404) show(rules, showRules);
    // a node not in a fleet answers 404, a tenant token 403: no fleet panel then
    const fleetPanel = $("fleet-panel");
    if (fleet.status === 404 || fleet.status === 403) {
      fleetPanel.hidden = true;
    } else if (fleet.ok && fleet.body && typeof fleet.body === "object") {
      const [nodes, rollouts, fleetDeps] = await Promise.all(
        ["/v1/fleet/nodes", "/v1/fleet/rollouts", "/v1/fleet/deployments"].map(api));
      if (gen !== generation) return;
      showFleet(fleet.body, nodes, rollouts);
      showFleetDeployments(fleetDeps);
      fleetPanel.hidden = false;
    } else {
      fleetPanel.hidden = false;
      problems.push(describe(fleet));
    }
    setBanner(problems.join("\n"));
    $("status").textContent = problems.length ? `update failed at ${new Date().toLocaleTimeString()}`
      : `updated ${new Date().toLocaleTimeString()} · every ${POLL_MS / 1000} s`;
  }

  async function loop() {
    const gen = generation;
    try {
      if (!document.hidden) await refresh();
    } catch (e) {   // a bug here must not stop the page: say it and keep polling
      setBanner(`dashboard error: ${e && e.message ? e.message : e}`);
    }
    if (gen === generation && token) timer = setTimeout(loop, POLL_MS);
  }

  // -- token and state ----------------------------------------------------------------------
  function setBanner(msg) {
    const b = $("banner");
    b.textContent = msg || "";
    b.hidden = !msg;
  }

  function signedIn(t) {
    generation += 1;
    clearTimeout(timer);
    token = t;
    sessionStorage.setItem(KEY, t);
    $("token-form").hidden = true;
    $("dashboard").hidden = false;
    $("signout").hidden = false;
    $("status").textContent = "loading…";
    setBanner("");
    loop();
  }

  function signedOut(why) {
    generation += 1;
    clearTimeout(timer);
    token = null;
    sessionStorage.removeItem(KEY);
    $("dashboard").hidden = true;
    $("signout").hidden = true;
    $("token-form").hidden = false;
    $("status").textContent = "not signed in";
    $("node-name").textContent = "";
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
    $("token-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const t = $("token-input").value.trim();
      $("token-input").value = "";
      if (t) signedIn(t);
    });
    $("signout").addEventListener("click", () => signedOut(""));
    window.addEventListener("hashchange", () => {   // a new link pasted into this tab
      const t = tokenFromFragment();
      if (t) signedIn(t);
    });
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && token) { clearTimeout(timer); generation += 1; loop(); }
    });
    const t = tokenFromFragment() || sessionStorage.getItem(KEY);
    if (t) signedIn(t);
    else signedOut("");
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
