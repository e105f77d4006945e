// Deployments and routes as tables: the lists the API gives, with their counters kept current
// by the live samples. Operators get the deployment actions — suspend/resume, scale, roll back —
// each confirmed first; a deployment defined in the node's manifest files can be suspended but
// not scaled or rolled back through the API (change the file), so those buttons say so.

import {Table, badge, clock, col, el, ms, num, numCol, text} from "./dom.js";
import {act, button} from "./actions.js";

const FILE = "defined in the node's manifest files: change it there";

// a namespace column only where there is more than one namespace to tell apart
const namespaces = (rows) => (new Set(rows.map((r) => r.namespace)).size > 1 ? [col("namespace", "namespace")] : []);

function merged(ctx, kind) {
  const cur = ctx.current?.[kind] || {};
  return ctx.lists[kind].map((r) => {
    const live = cur[r.name];
    if (!live) return r;
    const out = {...r};
    for (const k of ["state", "messages", "outputs", "dead_letters", "errors", "restarts", "replicas", "evictions", "revision",
                     "last_error", "last_error_ts", "received", "delivered", "dropped", "queued"]) {
      if (live[k] !== undefined) out[k] = live[k];
    }
    if (kind === "routes") {   // the interval's percentiles while messages flow, else the window's
      if (live.p50_ms != null) out.p50_ms = live.p50_ms;
      if (live.p99_ms != null) out.p99_ms = live.p99_ms;
    }
    return out;
  });
}

// the error counts by kind, and under them what went wrong last (when: its tooltip)
function errors(d) {
  return el("span", null, text(d.errors), d.last_error ? el("div", {class: "last-error", "data-field": "last_error",
    title: d.last_error_ts ? `at ${clock(d.last_error_ts)}` : null}, `last: ${d.last_error}`) : null);
}

function deploymentActions(ctx, d) {
  const name = d.name, fileOwned = d.source === "file" ? FILE : null;
  const base = `/v1/deployments/${encodeURIComponent(name)}`;
  const wrap = el("span", {class: "actions"});
  if (d.state === "suspended") {
    wrap.append(button("resume", () => act(ctx, {
      title: `Resume deployment ${name}?`, verb: "resume",
      lines: ["It takes batches again; the messages waiting in its routes go through."],
      call: () => ctx.api.post(`${base}/resume`), done: `deployment ${name} resumed`})));
  } else {
    wrap.append(button("suspend", () => act(ctx, {
      title: `Suspend deployment ${name}?`, verb: "suspend",
      lines: ["It stops taking batches; its instances stay warm and messages wait in its routes (queues fill; "
              + "sources wait when a queue is full)."],
      call: () => ctx.api.post(`${base}/suspend`), done: `deployment ${name} suspended`}),
    {disabled: d.state === "running" ? null : `it is ${text(d.state)}`}));
  }
  wrap.append(button("scale", () => act(ctx, {
    title: `Scale deployment ${name}`, verb: "scale",
    lines: [`It runs ${text(d.replicas)} replica(s) now. Scaling keeps the running version (no new revision).`],
    input: {label: "replicas", value: d.replicas || 1, min: 1, max: 10000},
    call: (v) => ctx.api.post(`${base}/scale`, {replicas: Number(v)}), done: (b) => `deployment ${name}: ${b.replicas} replica(s)`}),
  {disabled: fileOwned}));
  wrap.append(button("roll back", async () => {
    const hist = await ctx.api.get(`${base}/history`);
    const revs = hist.ok && Array.isArray(hist.body) ? hist.body : [];
    const target = revs.filter((h) => h.revision < d.revision && ["replaced", "serving"].includes(h.status)).pop();
    await act(ctx, {
      title: `Roll back deployment ${name}?`, verb: "roll back", danger: true,
      lines: [target ? `Revision ${d.revision} is serving; revision ${target.revision}'s manifest is applied again, `
                       + "as a new revision." : "It has no earlier revision that served; the API will refuse."],
      call: () => ctx.api.post(`${base}/rollback`, {}), done: (b) => `deployment ${name} rolled back: revision ${b.revision}`});
  }, {disabled: fileOwned, danger: true, action: "rollback"}));
  return wrap;
}

export const deployments = {
  create(ctx, root) {
    const box = el("div", {id: "deployments"});
    root.replaceChildren(el("section", {class: "card"}, el("h2", null, "Deployments ",
      el("span", {class: "muted"}, "(WASM containers)")), box));
    const table = new Table(box, [], "no deployments");
    const cols = (rows) => [
      col("name", "deployment"), ...namespaces(rows),
      col("state", "state", {get: (r) => badge(r.state)}),
      ...(ctx.canOperate ? [col("actions", "actions", {get: (r) => deploymentActions(ctx, r),
                                                       sig: (r) => `${r.state}|${r.replicas}|${r.revision}|${r.source}`})] : []),
      numCol("revision", "rev"),
      // instances on demand: how many it holds now, and its range when it has one
      col("replicas", "replicas", {num: true, get: (r) => (r.scaling && r.scaling.min !== r.scaling.max
        ? `${num(r.replicas)} (${r.scaling.min}–${r.scaling.max})` : num(r.replicas)),
                                   sig: (r) => `${r.replicas}|${r.scaling?.min}|${r.scaling?.max}`}),
      numCol("evictions", "evictions"), numCol("messages", "messages"),
      numCol("outputs", "outputs"), numCol("dead_letters", "dead letters"),
      col("restarts", "restarts", {num: true, get: (r) => (r.rollbacks ? `${num(r.restarts)} · ${num(r.rollbacks)} rolled back`
                                                                     : num(r.restarts))}),
      col("errors", "errors", {cls: "wrap", get: (r) => errors(r), sig: (r) => `${text(r.errors)}|${r.last_error}`}),
    ];
    return {render() {
      const rows = merged(ctx, "deployments");
      table.setColumns(cols(rows));
      table.set(rows);
    }};
  },
};

export const routes = {
  create(ctx, root) {
    const box = el("div", {id: "routes"});
    root.replaceChildren(el("section", {class: "card"}, el("h2", null, "Routes"), box));
    const table = new Table(box, [], "no routes");
    const cols = (rows) => [
      col("name", "route"), ...namespaces(rows), col("state", "state", {get: (r) => badge(r.state)}),
      col("source", "source"), col("steps", "steps"), col("sinks", "sinks"),
      numCol("received", "received"), numCol("delivered", "delivered"),
      col("dead_letters", "dead letters", {num: true, sig: (r) => String(r.dead_letters), get: (r) => (r.dead_letters
        ? el("button", {type: "button", class: "link", onclick: () => ctx.show("deadletters", {route: r.name})},
             r.dead_letters.toLocaleString("en-US")) : "0")}),
      numCol("dropped", "dropped"), numCol("queued", "queued"),
      col("p50_ms", "p50 ms", {num: true, get: (r) => ms(r.p50_ms)}),
      col("p99_ms", "p99 ms", {num: true, get: (r) => ms(r.p99_ms)}),
    ];
    return {render() {
      const rows = merged(ctx, "routes");
      table.setColumns(cols(rows));
      table.set(rows);
    }};
  },
};
