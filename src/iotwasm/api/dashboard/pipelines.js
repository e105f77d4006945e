// Pipelines: each route drawn as source → steps → sinks, with the current rate on every edge.
// A step is failing when its container is in error or dead letters at it rose over the last
// few samples (a sink likewise); a failing box is red and its last error is written under the
// drawing, with a way to its dead letters. A suspended step is drawn amber: messages wait.

import {badge, clock, el, empty, num, rate, svg, text} from "./dom.js";

const BOX = {w: 172, h: 74}, GAP = 64, SINK_H = 50, SINK_GAP = 12, TOP = 26, LEFT = 8;
const NAME_MAX = 22;   // longer names are cut in the box (the whole name is its tooltip)
const RISING_S = 10;   // dead letters that rose within this many seconds count as failing

// How many dead letters were added at `where` of `route` over the last RISING_S seconds (from
// the full samples the page keeps; with one sample only, whether they come in now).
function risen(ctx, route, where) {
  const full = ctx.full, now = full[full.length - 1];
  if (!now) return 0;
  const at = (s) => s.routes?.[route]?.where?.[where]?.dead_letters || 0;
  let base = full[0];
  for (const s of full) if (s.t <= now.t - RISING_S) base = s;
  if (base === now) return now.routes?.[route]?.where?.[where]?.dead_s > 0 ? 1 : 0;
  return at(now) - at(base);
}

function box(x, y, h, cls, name, lines) {
  const title = lines[0].length > NAME_MAX ? `${lines[0].slice(0, NAME_MAX - 1)}…` : lines[0];
  return svg("g", {class: `pnode ${cls}`, "data-name": name}, svg("title", null, name),
    svg("rect", {x, y, width: BOX.w, height: h, rx: 8}),
    lines.map((l, i) => svg("text", {x: x + 10, y: y + 20 + i * 16, class: i === 0 ? "pname" : l.cls || "pline"},
                            i === 0 ? title : l.text)));
}

function edge(x1, y1, x2, y2, label, cls, arrow) {
  const mid = (x1 + x2) / 2;
  return [svg("path", {d: `M${x1} ${y1} C${mid} ${y1} ${mid} ${y2} ${x2} ${y2}`, class: `pedge ${cls}`,
                       "marker-end": `url(#${arrow})`}),
          svg("text", {x: mid, y: Math.min(y1, y2) - 7, class: "prate", "text-anchor": "middle"}, label)];
}

function route(ctx, r, k) {
  const arrow = `arrow-${k}`;
  const cur = ctx.current || {routes: {}, deployments: {}};
  const live = cur.routes?.[r.name];
  const steps = live?.steps || r.steps || [];
  const sinks = live?.sinks || (r.sinks || []).map((t, i) => `${r.name}/${i}:${t}`);
  const where = live?.where || {};
  const problems = [];
  const nodes = [], edges = [];
  const sinkTotal = sinks.length * SINK_H + Math.max(0, sinks.length - 1) * SINK_GAP;
  const height = Math.max(BOX.h, sinkTotal) + TOP + 16;
  const midY = TOP + Math.max(BOX.h, sinkTotal) / 2;
  let x = LEFT;
  nodes.push(box(x, midY - BOX.h / 2, BOX.h, "source", "source", [
    `source`, {text: text(live?.source || r.source)}, {text: `in ${rate(live?.in_s)}`}]));
  let prevRate = live?.in_s;
  steps.forEach((name, i) => {
    const d = cur.deployments?.[name] || {};
    const w = where[name] || {};
    const rose = risen(ctx, r.name, name);
    const failing = d.state === "error" || rose > 0;
    const cls = failing ? "step failing" : d.state === "suspended" ? "step held" : "step";
    edges.push(...edge(x + BOX.w, midY, x + BOX.w + GAP, midY, rate(prevRate), "", arrow));
    x += BOX.w + GAP;
    nodes.push(box(x, midY - BOX.h / 2, BOX.h, cls, name, [
      name, {text: text(d.state || "pending"), cls: "pstate"},
      {text: `in ${rate(d.in_s)} · out ${rate(d.out_s)}`},
      {text: `dead ${num(w.dead_letters || 0)}${w.dead_s ? " · " + rate(w.dead_s) : ""}`, cls: failing ? "pbad" : "pline"}]));
    if (failing) {
      problems.push({where: name, why: d.state === "error" ? `container in error: ${text(d.last_error)}`
        : `${num(rose)} dead letter(s) in the last ${RISING_S} s; last: ${text(w.last_error)}`,
        at: w.last_error_ts});
    }
    prevRate = d.out_s;
  });
  const sx = x + BOX.w + GAP;
  const into = steps.length ? prevRate : live?.out_s;
  sinks.forEach((name, i) => {
    const y = TOP + (Math.max(BOX.h, sinkTotal) - sinkTotal) / 2 + i * (SINK_H + SINK_GAP);
    const w = where[name] || {};
    const rose = risen(ctx, r.name, name);
    edges.push(...edge(x + BOX.w, midY, sx, y + SINK_H / 2, i === 0 ? rate(into) : "", rose ? "bad" : "", arrow));
    nodes.push(box(sx, y, SINK_H, rose ? "sink failing" : "sink", name, [
      name.split(":").pop(), {text: `dead ${num(w.dead_letters || 0)}`, cls: rose ? "pbad" : "pline"}]));
    if (rose) problems.push({where: name, why: `${num(rose)} failed deliveries; last: ${text(w.last_error)}`,
                             at: w.last_error_ts});
  });
  const width = sx + BOX.w + LEFT;
  const defs = svg("defs", null, svg("marker", {id: arrow, viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7,
                                                markerHeight: 7, orient: "auto-start-reverse"},
                                         svg("path", {d: "M0 0L10 5L0 10z", class: "parrow"})));
  const drawing = svg("svg", {viewBox: `0 0 ${width} ${height}`, width, height, class: "pipeline-svg", role: "img",
                              "aria-label": `route ${r.name}: ${[text(r.source), ...steps, ...sinks].join(" → ")}`},
                      defs, edges, nodes);
  const list = problems.length ? el("ul", {class: "problems"}, problems.map((p) => el("li", {"data-where": p.where},
    el("strong", null, p.where), `: ${p.why}`, p.at ? ` (${clock(p.at)}) ` : " ",
    el("button", {type: "button", class: "link", onclick: () => ctx.show("deadletters", {route: r.name, step: p.where})},
       "dead letters")))) : null;
  return el("section", {class: "card pipeline", "data-name": r.name,
                        "data-failing": problems.map((p) => p.where).join(" ") || null},
    el("h3", null, r.name, " ", badge(live ? "running" : r.state || "pending"),
       el("span", {class: "muted"}, ` received ${num(live?.received ?? r.received)} · delivered `
          + `${num(live?.delivered ?? r.delivered)} · dead letters ${num(live?.dead_letters ?? r.dead_letters)}`)),
    el("div", {class: "scroll"}, drawing), list);
}

export function create(ctx, root) {
  const list = el("div", {id: "pipelines"});
  root.replaceChildren(el("p", {class: "muted intro"}, "Each route from its source through its steps to its sinks; "
    + "edges show messages per second now. A red box is failing: its container is in error or dead letters at it rose "
    + `in the last ${RISING_S} s.`), list);
  return {
    render() {
      const routes = ctx.lists.routes.length ? ctx.lists.routes
        : Object.keys(ctx.current?.routes || {}).map((name) => ({name}));
      list.replaceChildren(...(routes.length ? routes.map((r, k) => route(ctx, r, k)) : [empty("no routes")]));
    },
  };
}
