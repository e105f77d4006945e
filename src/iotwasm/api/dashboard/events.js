// Events: what changed on the node and why (state changes, updates, errors, alerts), newest
// first, as they happen.

import {Table, clock, col, el} from "./dom.js";

export function create(ctx, root) {
  const box = el("div", {id: "events"});
  root.replaceChildren(el("section", {class: "card"}, el("h2", null, "Recent events"), box));
  const table = new Table(box, [
    col("ts", "time", {get: (r) => clock(r.ts)}), col("kind", "kind"), col("object", "object"),
    col("message", "message", {cls: "wrap"}),
  ], "no events yet", (r) => `${r.ts}|${r.kind}|${r.object}|${r.message}`);
  return {render() { table.set(ctx.lists.events.slice(0, 100)); }};
}
