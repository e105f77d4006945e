// Fleet (a node started with --fleet, tokens without tenant): the fleet's summary, its nodes,
// deployments and rollouts, as the live stream brings them every couple of seconds. Operators
// can pause, resume or abort a rollout (confirmed, audited).

import {Table, badge, col, el, num, numCol, summary, text} from "./dom.js";
import {act, button} from "./actions.js";

function rolloutActions(ctx, r) {
  const base = `/v1/fleet/rollouts/${encodeURIComponent(r.deployment)}`;
  const wrap = el("span", {class: "actions"});
  const go = (action, lines) => () => act(ctx, {title: `${action[0].toUpperCase()}${action.slice(1)} the rollout of ${r.deployment}?`,
    verb: action, lines, call: () => ctx.api.post(`${base}/${action}`),
    done: (b) => `rollout of ${b.deployment} revision ${b.revision}: ${b.state}`});
  if (r.state === "progressing") {
    wrap.append(button("pause", go("pause", ["It stops moving to the next stage; nodes keep what they run."])));
  }
  if (r.state === "paused") {
    wrap.append(button("resume", go("resume", ["It moves on to the next stage when the current one is healthy."])));
  }
  if (r.state === "progressing" || r.state === "paused") {
    wrap.append(button("abort", go("abort", ["Every node goes back to the previous revision."]), {danger: true}));
  }
  return wrap;
}

export function create(ctx, root) {
  const facts = el("dl", {id: "fleet-summary", class: "summary"});
  const problems = el("ul", {class: "problems", hidden: true});
  const nodesBox = el("div", {id: "fleet-nodes"}), depsBox = el("div", {id: "fleet-deployments"}),
    rollBox = el("div", {id: "fleet-rollouts"}), note = el("p", {class: "empty", hidden: true});
  root.replaceChildren(el("section", {class: "card", id: "fleet-panel"}, el("h2", null, "Fleet"), note, facts, problems,
    el("h3", null, "Nodes"), nodesBox, el("h3", null, "Deployments"), depsBox, el("h3", null, "Rollouts"), rollBox));
  const count = (v) => (Array.isArray(v) ? v.length : undefined);
  const nodes = new Table(nodesBox, [
    col("id", "node"), col("health", "health", {get: (r) => badge(r.health)}), col("labels", "labels"),
    col("running", "running"), col("assigned", "assigned"), numCol("assignment_revision", "assignment rev"),
    col("heartbeat_age_s", "heartbeat", {get: (r) => (typeof r.heartbeat_age_s === "number" ? `${r.heartbeat_age_s}s ago` : undefined)}),
  ], "no live nodes", (r) => r.id);
  const deps = new Table(depsBox, [
    col("name", "deployment"), numCol("revision", "revision"),
    col("module", "module", {get: (r) => (typeof r.module === "string" ? r.module.slice(0, 19) : undefined)}),
    col("copies", "running / assigned / wanted", {get: (r) =>
      `${num(count(r.running))} / ${num(count(r.assigned))} / ${num(r.wanted)}`}),
    col("rollout", "rollout", {get: (r) => (r.rollout && typeof r.rollout === "object"
      ? el("span", null, badge(r.rollout.state), r.rollout.stage ? ` ${r.rollout.stage}` : "") : undefined)}),
    col("problems", "problems", {cls: "wrap"}),
  ], "no fleet deployments");
  const rollouts = new Table(rollBox, [], "no rollouts", (r) => `${r.deployment}|${r.revision}`);

  return {
    render() {
      const f = ctx.fleet;
      if (!f) { note.hidden = false; note.textContent = "reading the fleet…"; return; }
      if (f.error) {
        note.hidden = false;
        note.textContent = f.error;
        return;
      }
      note.hidden = true;
      const s = f.summary || {}, copies = s.copies || {}, ro = s.rollouts || {};
      summary(facts, [
        ["fleet", s.url], ["this node", s.node], ["link", badge(s.connected === true ? "connected" : undefined)],
        ["nodes", num(s.nodes)], ["deployments", num(s.deployments)],
        ["copies running / wanted", `${num(copies.running)} / ${num(copies.wanted)}`],
        ["rollouts progressing", num(ro.progressing)], ["rollouts paused", num(ro.paused)],
        ["assignment revision", s.assignment_revision],
      ]);
      const ps = Array.isArray(s.problems) ? s.problems : [];
      problems.replaceChildren(...ps.map((p) => el("li", null, text(p))));
      problems.hidden = !ps.length;
      nodes.set(f.nodes);
      deps.set(f.deployments);
      rollouts.setColumns([
        col("deployment", "deployment"), numCol("revision", "revision"), col("state", "state", {get: (r) => badge(r.state)}),
        ...(ctx.canOperate ? [col("actions", "actions", {get: (r) => rolloutActions(ctx, r), sig: (r) => r.state})] : []),
        col("stage", "stage", {get: (r) => (typeof r.stage === "number" && typeof r.stages === "number"
          ? `${r.stage + 1} of ${r.stages}` : undefined)}),
        col("updated", "updated nodes"),
        col("failed", "failed nodes", {get: (r) => (r.failed && typeof r.failed === "object" ? Object.keys(r.failed) : undefined)}),
        col("reason", "reason", {cls: "wrap"}),
      ]);
      rollouts.set(f.rollouts);
    },
  };
}

