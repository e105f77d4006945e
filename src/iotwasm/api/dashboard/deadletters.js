// Dead letters: the recent dead letters of the routes you may see, per route and step, with
// the reason, the module (deployment, its module reference) and function, and a preview of the
// payload — text when it is text, hex otherwise, always put in as text. Operators choose some
// and replay them into their route (confirmed, audited, each at most once). The list is read
// when the view opens or its filters change, and again when the live samples show new ones.

import {clock, el, empty, text} from "./dom.js";
import {act, button} from "./actions.js";

const PAGE = 50;
const AGAIN_MS = 3000;   // new dead letters read again at most this often

// a module reference as people say it: name:version, or a file's name
const moduleName = (ref) => (typeof ref === "string" ? ref.split("/").pop() : "–");

function payloadCell(p) {
  if (!p) return "–";
  const more = p.truncated ? ` … (${p.size.toLocaleString("en-US")} bytes)` : "";
  if (p.text !== undefined) {
    return el("code", {class: "payload", title: `${p.size} bytes, text`}, p.text.length > 160 ? p.text.slice(0, 160) + "…" : p.text, more);
  }
  return el("code", {class: "payload hex", title: `${p.size} bytes, binary: shown as hex`},
            el("span", {class: "badge"}, "hex"), " ", p.hex.length > 160 ? p.hex.slice(0, 160) + "…" : p.hex, more);
}

export function create(ctx, root) {
  const route = el("select", {id: "dl-route", "aria-label": "route"});
  const step = el("select", {id: "dl-step", "aria-label": "step"});
  const box = el("div", {id: "dead-letters"});
  const older = el("button", {type: "button", id: "dl-older", hidden: true}, "older");
  const replay = ctx.canOperate ? button("replay selected", () => replaySelected(), {action: "replay"}) : null;
  const count = el("span", {class: "muted", id: "dl-count"});
  root.replaceChildren(el("section", {class: "card"},
    el("h2", null, "Dead letters"),
    el("div", {class: "toolbar"}, el("label", null, "route ", route), el("label", null, "step ", step),
       replay, count),
    box, older));
  let rows = [], filter = {route: "", step: ""}, seen = null, loading = 0, loadedAt = 0;
  const selected = new Set();

  function options(select, values, current, all) {
    const want = ["", ...values];
    if (current && !want.includes(current)) want.push(current);
    if ([...select.options].map((o) => o.value).join() !== want.join()) {
      select.replaceChildren(...want.map((v) => el("option", {value: v}, v || all)));
    }
    select.value = current;
  }

  function fillFilters() {
    const routes = ctx.lists.routes.map((r) => r.name).sort();
    options(route, routes, filter.route, "all routes");
    const r = ctx.lists.routes.find((x) => x.name === filter.route);
    const live = ctx.current?.routes?.[filter.route];
    const steps = r ? [...(live?.steps || r.steps || []), ...(live?.sinks || [])] : [];
    options(step, steps, filter.step, "all steps");
  }

  function draw() {
    if (!rows.length) { box.replaceChildren(empty("no dead letters")); count.textContent = ""; return; }
    count.textContent = `${rows.length} shown${selected.size ? `, ${selected.size} chosen` : ""}`;
    if (replay) replay.disabled = !selected.size;
    const head = el("tr", null, ctx.canOperate ? el("th", null, "") : null,
      ["time", "where: route › step (module · function)", "reason", "topic", "payload", "replayed"].map((h) => el("th", null, h)));
    box.replaceChildren(el("div", {class: "scroll"}, el("table", {class: "dead"}, el("thead", null, head), el("tbody", null,
      rows.map((d) => el("tr", {"data-name": String(d.id), "data-route": d.route, class: d.replayed ? "done" : null},
        ctx.canOperate ? el("td", null, el("input", {type: "checkbox", "aria-label": `choose dead letter ${d.id}`,
          checked: selected.has(d.id), disabled: !d.replayable, title: d.replayable ? null : (d.replayed ? "replayed already"
            : "its step is no longer part of the route"),
          onchange: (ev) => { ev.target.checked ? selected.add(d.id) : selected.delete(d.id); draw(); }})) : null,
        el("td", {"data-col": "ts"}, clock(d.ts)),
        el("td", {"data-col": "where"}, el("span", {"data-field": "route"}, d.route), " › ",
           el("span", {"data-field": "step"}, d.step),
           el("div", {class: "muted"}, el("span", {"data-field": "module", title: d.module ? d.module.digest : null},
                                           d.module ? moduleName(d.module.ref) : "–"),
              " · ", el("span", {"data-field": "function"}, text(d.function)))),
        el("td", {"data-col": "reason", class: "wrap"}, el("span", {class: "badge", "data-field": "kind"}, d.kind), " ",
           d.reason),
        el("td", {"data-col": "topic"}, d.topic),
        el("td", {"data-col": "payload", class: "wrap"}, payloadCell(d.payload)),
        el("td", {"data-col": "replayed"}, d.replayed ? `${clock(d.replayed.ts)} by ${d.replayed.by}` : "–")))))));
  }

  async function load(more = false) {
    const q = new URLSearchParams({limit: String(PAGE)});
    if (filter.route) q.set("route", filter.route);
    if (filter.step) q.set("step", filter.step);
    if (more && rows.length) q.set("before", String(rows[rows.length - 1].id));
    const mine = ++loading;
    loadedAt = Date.now();
    const res = await ctx.api.get(`/v1/dead-letters?${q}`);
    if (mine !== loading) return;
    if (!res.ok) { box.replaceChildren(empty(`GET /v1/dead-letters: ${res.status} — ${res.detail}`)); return; }
    const got = Array.isArray(res.body) ? res.body : [];
    rows = more ? [...rows, ...got] : got;
    for (const id of [...selected]) if (!rows.some((d) => d.id === id && d.replayable)) selected.delete(id);
    older.hidden = got.length < PAGE;
    draw();
  }

  async function replaySelected() {
    const byRoute = new Map();
    for (const d of rows) if (selected.has(d.id)) byRoute.set(d.route, [...(byRoute.get(d.route) || []), d.id]);
    if (!byRoute.size) return;
    const lines = [...byRoute].map(([r, ids]) => `route ${r}: dead letter(s) ${ids.join(", ")}`);
    await act(ctx, {title: `Replay ${selected.size} dead letter(s)?`, verb: "replay", lines: [...lines,
      "Each goes back into its route at the step where it failed (a sink's: to the sinks), once."],
    call: async () => {
      let last = null;
      const said = [];
      for (const [r, ids] of byRoute) {
        last = await ctx.api.post(`/v1/routes/${encodeURIComponent(r)}/dead-letters/replay`, {ids});
        if (!last.ok) return last;
        const b = last.body;
        said.push(`${r}: ${b.replayed.length} replayed, ${b.queued.length} still in the route`
                  + (b.skipped.length ? `, skipped ${b.skipped.map((s) => `${s.id} (${s.reason})`).join("; ")}` : ""));
      }
      return {...last, body: said.join(" · ")};
    }, done: (said) => said});
    selected.clear();
    load();
  }

  route.addEventListener("change", () => { filter = {route: route.value, step: ""}; selected.clear(); fillFilters(); load(); });
  step.addEventListener("change", () => { filter.step = step.value; selected.clear(); load(); });
  older.addEventListener("click", () => load(true));

  return {
    open(opts) {
      filter = {route: opts.route || "", step: opts.step || ""};
      selected.clear();
      seen = null;
    },
    render(why) {
      fillFilters();
      // read again when shown, and when the samples say dead letters were added
      const total = Object.values(ctx.current?.routes || {}).reduce((a, r) => a + (r.dead_letters || 0), 0);
      if (why === "shown" || (seen !== null && total !== seen && !selected.size && Date.now() - loadedAt > AGAIN_MS)) {
        load();
        seen = total;
      } else if (seen === null) {
        seen = total;
      }
    },
  };
}
