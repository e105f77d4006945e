// Building the page without HTML strings: every value reaches the DOM as text (a text node or
// textContent, never innerHTML), a missing value shows as "–", and tables are patched cell by
// cell so a button under the pointer is not replaced while the numbers move.

export const $ = (id) => document.getElementById(id);

export function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    e.append(c instanceof Node ? c : String(c));   // a string becomes a text node
  }
  return e;
}

const SVG = "http://www.w3.org/2000/svg";
export function svg(tag, attrs, ...children) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null) e.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c !== undefined && c !== null) e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

export function text(v) {
  if (v === undefined || v === null || v === "") return "–";
  if (Array.isArray(v)) return v.length ? v.map(text).join(", ") : "–";
  if (typeof v === "object") {
    const parts = Object.entries(v).map(([k, x]) => `${k} ${text(x)}`);
    return parts.length ? parts.join(", ") : "–";
  }
  return String(v);
}

const finite = (v) => typeof v === "number" && Number.isFinite(v);
export const num = (v) => (finite(v) ? v.toLocaleString("en-US") : "–");
export const ms = (v) => (finite(v) ? v.toFixed(2) : "–");

export function rate(v) {
  if (!finite(v)) return "–";
  if (v === 0) return "0/s";
  return `${v >= 100 ? Math.round(v).toLocaleString("en-US") : v >= 10 ? v.toFixed(1) : v.toFixed(2)}/s`;
}

export function bytes(v) {
  if (!finite(v)) return "–";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return `${v >= 100 || i === 0 ? Math.round(v) : v.toFixed(1)} ${units[i]}`;
}

export function duration(s) {
  if (!finite(s)) return "–";
  s = Math.max(0, Math.floor(s));
  const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  if (m) return `${m}m ${s % 60}s`;
  return `${s}s`;
}

export function clock(ts) {
  if (!finite(ts)) return "–";
  const t = new Date(ts * 1000);
  return t.toLocaleDateString() === new Date().toLocaleDateString() ? t.toLocaleTimeString() : t.toLocaleString();
}

const OK = new Set(["running", "enabled", "ok", "serving", "succeeded", "ready", "connected", "up", "live"]);
const BAD = new Set(["error", "failed", "terminated", "rolled-back", "aborted", "crashed", "unhealthy",
                     "disconnected", "not ready", "failing"]);
const WARN = new Set(["pending", "suspended", "paused", "progressing", "disabled", "created", "loaded",
                      "instantiated", "superseded", "reconnecting…", "replayed"]);

export function tone(state) {
  const s = text(state);
  return OK.has(s) ? "ok" : BAD.has(s) ? "bad" : WARN.has(s) ? "warn" : (s.includes("not") ? "bad" : "");
}

export function badge(state) {
  const s = text(state);
  return el("span", {class: `badge ${tone(s)}`.trim()}, s);
}

export function summary(target, pairs) {
  target.replaceChildren(...pairs.map(([k, v]) => el("div", null, el("dt", null, k),
                                                       el("dd", null, v instanceof Node ? v : text(v)))));
}

export const empty = (msg) => el("p", {class: "empty"}, msg);

// A table whose rows are keyed (data-name) and whose cells are patched in place.
// cols: [{key, label, get(row) → value or Node, num: bool, sig(row) → string}]: a cell holding
// a Node is rebuilt only when its signature (default: the Node's text) changes.
export class Table {
  constructor(target, cols, emptyText, key = (r) => r.name) {
    this.target = target;
    this.cols = cols;
    this.emptyText = emptyText;
    this.key = key;
    this.rows = new Map();
    this.body = null;
  }

  setColumns(cols) {
    if (cols.map((c) => c.key).join() !== this.cols.map((c) => c.key).join()) {
      this.cols = cols;
      this.body = null;   // rebuilt at the next set()
    } else {
      this.cols = cols;
    }
  }

  set(rows) {
    rows = Array.isArray(rows) ? rows.filter((r) => r && typeof r === "object") : [];
    if (!rows.length) {
      this.body = null;
      this.rows.clear();
      this.target.replaceChildren(empty(this.emptyText));
      return;
    }
    const keys = rows.map((r) => String(this.key(r)));
    if (!this.body || keys.join("\u0000") !== [...this.rows.keys()].join("\u0000")) this.build(rows, keys);
    rows.forEach((r, i) => this.patch(this.rows.get(keys[i]), r));
  }

  build(rows, keys) {
    const head = el("tr", null, this.cols.map((c) => el("th", {class: c.num ? "num" : null, scope: "col"}, c.label)));
    this.body = el("tbody");
    this.rows.clear();
    keys.forEach((k) => {
      const tr = el("tr", {"data-name": k}, this.cols.map((c) => el("td", {class: c.num ? "num" : c.cls || null,
                                                                           "data-col": c.key})));
      this.rows.set(k, tr);
      this.body.append(tr);
    });
    this.target.replaceChildren(el("div", {class: "scroll"}, el("table", null, el("thead", null, head), this.body)));
  }

  patch(tr, row) {
    this.cols.forEach((c, i) => {
      const td = tr.children[i];
      let v;
      try { v = c.get ? c.get(row) : row[c.key]; } catch (e) { v = undefined; }
      if (v instanceof Node) {
        const sig = c.sig ? c.sig(row) : v.textContent;
        if (td.dataset.sig !== sig || !td.firstChild) { td.replaceChildren(v); td.dataset.sig = sig; }
        return;
      }
      const t = c.num && typeof v !== "string" ? num(v) : text(v);
      if (td.textContent !== t || td.firstChild instanceof Element) td.textContent = t;
      if (c.title) td.title = c.title(row) || "";
    });
  }
}

export const col = (key, label, extra) => ({key, label, ...extra});
export const numCol = (key, label) => col(key, label, {num: true});
