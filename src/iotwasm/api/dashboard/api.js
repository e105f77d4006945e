// Talking to the node's API: JSON calls and the live stream, both with the token in the
// Authorization header (never in a URL). Errors come back as {status, detail} with the API's
// own problem `detail` line.

export class Api {
  constructor(token) {
    this.token = token;
  }

  async call(method, path, body) {
    const headers = {Authorization: `Bearer ${this.token}`, Accept: "application/json"};
    const init = {method, headers, cache: "no-store", credentials: "omit", redirect: "error"};
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let r;
    try {
      r = await fetch(path, init);
    } catch (e) {
      return {path, method, status: 0, ok: false, body: null, detail: `cannot reach the node (${e.message || e})`};
    }
    let data = null;
    try { data = await r.json(); } catch (e) { data = null; }
    const detail = data && typeof data.detail === "string" ? data.detail
      : (r.ok ? "" : `HTTP ${r.status}${r.statusText ? " " + r.statusText : ""}`);
    return {path, method, status: r.status, ok: r.ok, body: data, detail};
  }

  get(path) { return this.call("GET", path); }
  post(path, body) { return this.call("POST", path, body === undefined ? {} : body); }
}

export function describe(res) {
  const what = `${res.method || "GET"} ${res.path}`;
  return res.status ? `${what}: ${res.status} — ${res.detail}` : `${what}: ${res.detail}`;
}

// The live stream (server-sent events read with fetch). `on(kind, doc)` gets each event;
// `state(s, detail)` hears "live", "reconnecting…" (with why) and "refused" (with the API's
// detail: the token is no good, do not retry). It reconnects by itself after a network error,
// waiting longer each time (up to 15 s); `close()` ends it.
export class Stream {
  constructor(api, on, state) {
    this.api = api;
    this.on = on;
    this.state = state;
    this.controller = null;
    this.closed = false;
    this.delay = 1000;
    this.timer = null;
  }

  open() {
    this.closed = false;
    this.connect();
    return this;
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    if (this.controller) this.controller.abort();
  }

  retry(why) {
    if (this.closed) return;
    this.state("reconnecting…", why);
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.connect(), this.delay);
    this.delay = Math.min(15000, this.delay * 2);
  }

  async connect() {
    if (this.closed) return;
    const controller = this.controller = new AbortController();
    let r;
    try {
      r = await fetch("/v1/stream", {headers: {Authorization: `Bearer ${this.api.token}`, Accept: "text/event-stream"},
                                     cache: "no-store", credentials: "omit", redirect: "error",
                                     signal: controller.signal});
    } catch (e) {
      if (!controller.signal.aborted) this.retry(`cannot reach the node (${e.message || e})`);
      return;
    }
    if (!r.ok) {
      let detail = `HTTP ${r.status}`;
      try { const b = await r.json(); if (typeof b.detail === "string") detail = b.detail; } catch (e) { /* not JSON */ }
      if (r.status === 401 || r.status === 403) { this.closed = true; this.state("refused", detail); }
      else this.retry(`GET /v1/stream: ${r.status} — ${detail}`);
      return;
    }
    this.delay = 1000;
    this.state("live", "");
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    try {
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        buf += decoder.decode(value, {stream: true});
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          this.dispatch(block);
        }
      }
    } catch (e) {
      if (controller.signal.aborted) return;
    }
    if (!this.closed && !controller.signal.aborted) this.retry("the stream ended");
  }

  dispatch(block) {
    let kind = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith("event:")) kind = line.slice(6).trim();
      else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
    }
    if (!data.length) return;   // a keep-alive comment
    let doc;
    try { doc = JSON.parse(data.join("\n")); } catch (e) { return; }
    if (kind === "end") { this.closed = true; this.state("refused", doc.detail || "the stream ended"); return; }
    this.on(kind, doc);
  }
}
