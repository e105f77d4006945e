// A small time-series line chart drawn as SVG: no library, no canvas, colours from the page's
// CSS (so it follows light and dark), text that stays text. One chart shows a few series over
// the samples the page holds (the node's history, then each live sample); a missing value or
// a gap of more than three sample intervals breaks the line instead of drawing through it.
//
// The element carries what it drew for whoever looks closer (and for the tests):
// data-samples (how many samples are in its window) and data-last (the newest sample's time).

import {el, svg} from "./dom.js";

const W = 560, H = 170;
const PAD = {left: 46, right: 10, top: 10, bottom: 22};

function niceCeil(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

function ago(s) {
  s = Math.round(s);
  return s >= 120 ? `−${Math.round(s / 60)} min` : `−${s} s`;
}

export class Chart {
  // series: [{label, tone, get(sample) → number|null}]; format(v) → short text for axis/legend
  constructor(title, series, {format = (v) => String(v), unit = ""} = {}) {
    this.series = series;
    this.format = format;
    this.plot = svg("svg", {viewBox: `0 0 ${W} ${H}`, class: "chart-svg", role: "img", "aria-label": title});
    this.values = series.map((s) => el("span", {class: "legend-value"}, "–"));
    this.legend = el("div", {class: "legend"}, series.map((s, i) =>
      el("span", {class: "legend-item"}, el("span", {class: `swatch ${s.tone}`}), `${s.label} `, this.values[i])));
    this.element = el("figure", {class: "chart", "data-samples": "0"},
                      el("figcaption", null, title, unit ? el("span", {class: "muted"}, ` (${unit})`) : null),
                      this.legend, this.plot);
  }

  // samples: [{t, …}] oldest first; span: seconds shown; interval: seconds between samples
  set(samples, span, interval) {
    const end = samples.length ? samples[samples.length - 1].t : Date.now() / 1000;
    const start = end - span;
    const shown = samples.filter((s) => s.t >= start);
    const pw = W - PAD.left - PAD.right, ph = H - PAD.top - PAD.bottom;
    const cols = this.series.map((s) => shown.map((x) => {
      let v;
      try { v = s.get(x); } catch (e) { v = null; }
      return typeof v === "number" && Number.isFinite(v) ? v : null;
    }));
    const top = niceCeil(Math.max(0, ...cols.flat().filter((v) => v !== null)));
    const X = (t) => PAD.left + (t - start) / span * pw;
    const Y = (v) => PAD.top + ph - Math.min(v, top) / top * ph;

    const parts = [];
    for (const f of [0, 0.5, 1]) {
      const y = Y(top * f);
      parts.push(svg("line", {x1: PAD.left, x2: W - PAD.right, y1: y, y2: y, class: f ? "grid" : "axis"}),
                 svg("text", {x: PAD.left - 6, y: y + 4, class: "tick", "text-anchor": "end"}, this.format(top * f)));
    }
    for (const f of [0, 0.5, 1]) {
      parts.push(svg("text", {x: PAD.left + f * pw, y: H - 6, class: "tick",
                              "text-anchor": f === 0 ? "start" : f === 1 ? "end" : "middle"},
                     f === 1 ? "now" : ago(span * (1 - f))));
    }
    const gap = 3 * interval;
    cols.forEach((vals, i) => {
      let d = "", prevT = null, points = 0;
      vals.forEach((v, k) => {
        const t = shown[k].t;
        if (v === null) { prevT = null; return; }
        const joined = prevT !== null && t - prevT <= gap;
        d += `${joined ? "L" : "M"}${X(t).toFixed(1)} ${Y(v).toFixed(1)}`;
        prevT = t;
        points += 1;
      });
      if (points === 1) d += "h2";   // a lone point still shows
      parts.push(svg("path", {d, class: `line ${this.series[i].tone}`}));
      const last = [...vals].reverse().find((v) => v !== null);
      this.values[i].textContent = last === undefined ? "–" : this.format(last);
    });
    this.plot.replaceChildren(...parts);
    this.element.dataset.samples = String(shown.length);
    this.element.dataset.last = shown.length ? String(end) : "";
  }
}

// Charts keyed by name inside one container, created on first use and dropped when their
// object goes away.
export class ChartGrid {
  constructor(target) {
    this.target = target;
    this.cards = new Map();
  }

  // items: [{key, title, charts: [Chart-args…]}] → one card per item, in order
  update(items, samples, span, interval) {
    const keep = new Set(items.map((it) => it.key));
    for (const [k, card] of this.cards) if (!keep.has(k)) { card.element.remove(); this.cards.delete(k); }
    items.forEach((it) => {
      let card = this.cards.get(it.key);
      if (!card) {
        const charts = it.charts.map(([title, series, opts]) => new Chart(title, series, opts));
        charts.forEach((c, i) => c.element.setAttribute("data-chart", `${it.key}:${it.charts[i][3] || i}`));
        card = {charts, head: el("h3", null), element: null};
        card.element = el("section", {class: "card chart-card", "data-name": it.key}, card.head, ...charts.map((c) => c.element));
        this.cards.set(it.key, card);
      }
      card.head.replaceChildren(...(Array.isArray(it.title) ? it.title : [it.title]));
      this.target.append(card.element);   // keeps the order of `items`
      card.charts.forEach((c) => c.set(samples, span, interval));
    });
  }
}
