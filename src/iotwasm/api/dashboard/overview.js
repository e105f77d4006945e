// Overview: the node at a glance (identity, readiness, counts, current rates) and charts over
// the samples the page holds — node CPU, memory and outbox backlog; per route messages in/out,
// dead letters and p50/p99 latency; per deployment the same for its calls.

import {badge, bytes, duration, el, empty, ms, num, rate, summary, text} from "./dom.js";
import {Chart, ChartGrid} from "./chart.js";

const pct = (v) => `${Math.round(v)}%`;
const short = (v) => (v >= 1000 ? `${+(v / 1000).toFixed(1)}k` : v >= 10 ? String(Math.round(v)) : String(+v.toFixed(2)));
const latency = (v) => (v >= 100 ? String(Math.round(v)) : String(+v.toFixed(2)));

export function throughput(kind, name) {
  return [["messages per second", [
    {label: "in", tone: "t-in", get: (s) => s[kind][name]?.in_s},
    {label: "out", tone: "t-out", get: (s) => s[kind][name]?.out_s},
    {label: "dead letters", tone: "t-dead", get: (s) => s[kind][name]?.dead_s},
  ], {format: short, unit: "/s"}, "rate"], ["latency", [
    {label: "p50", tone: "t-p50", get: (s) => s[kind][name]?.p50_ms},
    {label: "p99", tone: "t-p99", get: (s) => s[kind][name]?.p99_ms},
  ], {format: latency, unit: "ms"}, "latency"]];
}

export function create(ctx, root) {
  const facts = el("dl", {id: "node-summary", class: "summary"});
  const problems = el("ul", {class: "problems", hidden: true});
  const nodeCharts = [
    new Chart("CPU", [{label: "node", tone: "t-in", get: (s) => s.node?.cpu_pct}], {format: pct, unit: "% of one core"}),
    new Chart("memory", [{label: "resident", tone: "t-out", get: (s) => (s.node?.rss_bytes ?? NaN) / 1048576}],
              {format: short, unit: "MiB"}),
    new Chart("outbox backlog", [{label: "waiting", tone: "t-p99", get: (s) => s.node?.outbox}], {format: short, unit: "messages"}),
  ];
  nodeCharts.forEach((c, i) => c.element.setAttribute("data-chart", `node:${["cpu", "memory", "outbox"][i]}`));
  const routeGrid = el("div", {class: "grid", id: "route-charts"});
  const depGrid = el("div", {class: "grid", id: "deployment-charts"});
  const routes = new ChartGrid(routeGrid), deps = new ChartGrid(depGrid);
  const noRoutes = empty("no routes"), noDeps = empty("no deployments");
  root.replaceChildren(
    el("section", {class: "card", id: "node-panel"}, el("h2", null, "Node"), facts, problems),
    el("section", {class: "card"}, el("h2", null, "Node over time"),
       el("div", {class: "grid"}, nodeCharts.map((c) => c.element))),
    el("h2", {class: "section"}, "Routes"), noRoutes, routeGrid,
    el("h2", {class: "section"}, "Deployments ", el("span", {class: "muted"}, "(one call handles a batch)")), noDeps, depGrid);

  function showFacts() {
    const n = ctx.node || {};
    const ready = n.readiness && typeof n.readiness === "object" ? n.readiness : {};
    const cur = ctx.current || {};
    const sum = (kind, key) => Object.values(cur[kind] || {}).reduce((a, o) => a + (o[key] || 0), 0);
    summary(facts, [
      ["node", n.name], ["version", n.version],
      ["up", duration(n.uptime_s + (Date.now() - (ctx.nodeReadAt || Date.now())) / 1000)], ["bus", n.bus],
      ["readiness", badge(ready.ready === true ? "ready" : ready.ready === false ? "not ready" : undefined)],
      ["deployments", num(ctx.lists.deployments.length)], ["routes", num(ctx.lists.routes.length)],
      ["messages in", cur.routes ? rate(sum("routes", "in_s")) : "–"],
      ["dead letters", cur.routes ? rate(sum("routes", "dead_s")) : "–"],
      ["outbox backlog", num(cur.node ? cur.node.outbox : n.outbox_backlog)],
      ["CPU", cur.node && cur.node.cpu_pct != null ? pct(cur.node.cpu_pct) : "–"],
      ["memory", bytes(cur.node ? cur.node.rss_bytes : undefined)],
      ["manifests", n.manifests],
      ["signed in as", `${text(ctx.you?.name)} (${text(ctx.you?.role)}${ctx.you?.tenant ? ", tenant " + ctx.you.tenant : ""})`],
    ]);
    const reasons = Array.isArray(ready.reasons) ? ready.reasons : [];
    problems.replaceChildren(...reasons.map((x) => el("li", null, text(x))));
    problems.hidden = !reasons.length;
  }

  function render() {
    showFacts();
    const span = ctx.span(), iv = ctx.interval, samples = ctx.samples;
    nodeCharts.forEach((c) => c.set(samples, span, iv));
    const names = (kind) => [...new Set([...ctx.lists[kind].map((r) => r.name),
                                         ...Object.keys(ctx.current?.[kind] || {})])].sort();
    const cur = ctx.current || {routes: {}, deployments: {}};
    const rs = names("routes"), ds = names("deployments");
    noRoutes.hidden = rs.length > 0;
    noDeps.hidden = ds.length > 0;
    routes.update(rs.map((n) => ({key: `route:${n}`, charts: throughput("routes", n), title: [
      n, " ", badge(cur.routes[n] ? "running" : "pending"),
      el("span", {class: "muted"}, ` p50 ${ms(cur.routes[n]?.p50_ms)} · p99 ${ms(cur.routes[n]?.p99_ms)} ms`)]})),
    samples, span, iv);
    deps.update(ds.map((n) => ({key: `deployment:${n}`, charts: throughput("deployments", n), title: [
      n, " ", badge(cur.deployments[n]?.state || "pending")]})), samples, span, iv);
  }

  return {render};
}
