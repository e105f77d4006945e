// Rules and alerts: the streaming rules with their counters (operators can enable or disable
// one), the latest alerts (threshold alerts fired by the node, as events, and each rule's
// alert counters), the threshold alert rules, and the latest results the store sinks of rules
// and routes wrote. Results are read when the view opens and again when counters move, at
// most every few seconds.

import {Table, badge, clock, col, el, empty, numCol, text} from "./dom.js";
import {act, button} from "./actions.js";

const RESULTS_EVERY_MS = 5000;

function ruleActions(ctx, r) {
  const base = `/v1/rules/${encodeURIComponent(r.name)}`;
  if (r.state === "disabled") {
    return button("enable", () => act(ctx, {title: `Enable rule ${r.name}?`, verb: "enable",
      lines: ["It evaluates again from the next message (its window state was kept)."],
      call: () => ctx.api.post(`${base}/enable`), done: `rule ${r.name} enabled`}));
  }
  return button("disable", () => act(ctx, {title: `Disable rule ${r.name}?`, verb: "disable",
    lines: ["It stops evaluating; its window state is kept. This lasts until its manifest changes."],
    call: () => ctx.api.post(`${base}/disable`), done: `rule ${r.name} disabled`}),
  {disabled: r.state === "enabled" ? null : `it is ${text(r.state)}`});
}

function payloadText(p) {
  if (p === null || p === undefined) return "–";
  return typeof p === "string" ? p : JSON.stringify(p);
}

export function create(ctx, root) {
  const rulesBox = el("div", {id: "rules"}), alertsBox = el("div", {id: "alerts"}),
    firedBox = el("div", {id: "alert-events"}), resultsBox = el("div", {id: "results"});
  root.replaceChildren(
    el("section", {class: "card", id: "rules-panel"}, el("h2", null, "Rules"), rulesBox),
    el("section", {class: "card"}, el("h2", null, "Latest alerts"), firedBox),
    el("section", {class: "card"}, el("h2", null, "Threshold alert rules"), alertsBox),
    el("section", {class: "card"}, el("h2", null, "Latest results ", el("span", {class: "muted"},
      "(what the store sinks of rules and routes wrote last)")), resultsBox));
  const rules = new Table(rulesBox, [], "no rules");
  const alerts = new Table(alertsBox, [
    col("name", "alert"), col("metric", "metric"), col("target", "target"), numCol("above", "above"),
    numCol("fired", "fired"), col("last_fired", "last fired", {get: (r) => clock(r.last_fired)}),
    col("to", "to", {get: (r) => [r.topic, r.webhook].filter(Boolean).join(", ")}),
  ], "no threshold alert rules (PUT /v1/alerts/NAME)");
  const fired = new Table(firedBox, [
    col("ts", "time", {get: (r) => clock(r.ts)}), col("source", "from"), col("object", "object"),
    col("message", "alert", {cls: "wrap"}),
  ], "no alert fired yet", (r) => `${r.source}|${r.object}|${r.ts ?? ""}`);
  let lastResults = 0, resultsKey = "", loading = false;

  async function loadResults() {
    if (loading) return;
    loading = true;
    lastResults = Date.now();
    const res = await ctx.api.get("/v1/results?limit=5");
    loading = false;
    if (!res.ok) { resultsBox.replaceChildren(empty(`GET /v1/results: ${res.status} — ${res.detail}`)); return; }
    const groups = (res.body || []).filter((g) => g.rows.length);
    resultsBox.replaceChildren(...(groups.length ? groups.map((g) => el("div", {class: "result", "data-name": `${g.kind}:${g.name}`},
      el("h3", null, `${g.kind} ${g.name} `, el("span", {class: "muted"}, `→ table ${g.table}`)),
      el("ul", {class: "rows"}, g.rows.map((r) => el("li", null,
        el("span", {class: "muted"}, `${clock(r.timestamp_ms / 1000)} ${r.topic} `),
        el("code", null, payloadText(r.payload).slice(0, 300))))))) : [empty("nothing stored yet")]));
  }

  return {
    render(why) {
      const cur = ctx.current?.rules || {};
      rules.setColumns([
        col("name", "rule"), col("state", "state", {get: (r) => badge(r.state)}),
        ...(ctx.canOperate ? [col("actions", "actions", {get: (r) => ruleActions(ctx, r), sig: (r) => r.state})] : []),
        col("tags", "tags"),
        numCol("received", "received"), numCol("matched", "matched"), numCol("emitted", "emitted"),
        numCol("errors", "errors"), col("alerts_fired", "alerts fired", {num: true, get: (r) => r.alerts_fired ?? "–"}),
        col("last_error", "last error", {cls: "wrap"}),
      ]);
      rules.set(ctx.lists.rules.map((r) => ({...r, ...(cur[r.name] || {})})));
      alerts.set(ctx.lists.alerts);
      const ruleAlerts = Object.entries(cur).filter(([, r]) => r.alerts_fired).map(([name, r]) => ({
        source: "rule", object: name, ts: null, message: `${r.alerts_fired} alert(s) raised by rule ${name}`}));
      fired.set([...ctx.lists.events.filter((e) => e.kind === "alert").slice(0, 20)
        .map((e) => ({source: "threshold", object: e.object, ts: e.ts, message: e.message})), ...ruleAlerts]);
      const key = Object.values(cur).map((r) => r.emitted).join() + "|"
        + Object.values(ctx.current?.routes || {}).map((r) => r.delivered).join();
      if (why === "shown" || (key !== resultsKey && Date.now() - lastResults > RESULTS_EVERY_MS)) {
        resultsKey = key;
        loadResults();
      }
    },
  };
}
