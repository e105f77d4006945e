"""What the dashboard reads and does, over real HTTP against real nodes: the sample history and
its rates, the live stream and what each token sees in it, the dead-letter browser and replay,
the latest results, and a deployment's last error."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
import time

import httpx
import pytest

from apinode import ECHO_WASM, ApiNode, deployment, http_route, wait_for
from brokers import free_port
from conftest import EXAMPLES

PASS_WASM = (EXAMPLES / "passthrough.wasm").read_bytes()


def push(c: httpx.Client, wasm: bytes, name: str) -> None:
    r = c.post("/v1/modules", content=wasm, params={"name": name, "version": "1"})
    assert r.status_code == 201, r.text


def apply(c: httpx.Client, *docs: str) -> None:
    r = c.post("/v1/apply", content="---\n".join(docs))
    assert r.status_code == 200 and r.json()["problems"] == [], r.text


def on_loop(n: ApiNode, fn):
    """Run `fn()` on the node's event loop (where the API and the sampler run) and return its result."""
    async def call():
        return fn()
    return asyncio.run_coroutine_threadsafe(call(), n.loop).result(30)


class Events:
    """A /v1/stream read in a thread: every (event, data) it carried, in order."""

    def __init__(self, n: ApiNode, token: str):
        self.items: list[tuple[str, dict]] = []
        self.status: int | None = None
        self._stop = threading.Event()
        self._client = httpx.Client(base_url=n.url, headers={"Authorization": f"Bearer {token}"},
                                    timeout=httpx.Timeout(30, read=20))
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            with self._client.stream("GET", "/v1/stream") as r:
                self.status = r.status_code
                kind = None
                for line in r.iter_lines():
                    if line.startswith("event: "):
                        kind = line[7:]
                    elif line.startswith("data: "):
                        self.items.append((kind, json.loads(line[6:])))
        except httpx.HTTPError:
            if not self._stop.is_set():   # closed by close(): the end we asked for
                raise

    def of(self, kind: str) -> list[dict]:
        return [d for k, d in list(self.items) if k == kind]

    def text(self) -> str:
        return json.dumps(list(self.items))

    def close(self) -> None:
        self._stop.set()
        self._client.close()


@pytest.fixture()
def api(tmp_path):
    n = ApiNode(tmp_path).start()
    yield n
    n.stop()


def test_a_deployment_whose_messages_fail_shows_its_last_error(api):
    c = api.admin
    push(c, ECHO_WASM, "echo")
    apply(c, deployment("decode", "echo:1"), http_route("r", "decode", "/in", "in/{device}", "out"))
    assert c.get("/v1/deployments/decode").json()["last_error"] is None
    api.ingest("/in", "d1", [b"?bad frame"])
    wait_for(lambda: c.get("/v1/deployments/decode").json().get("dead_letters") == 1, what="a dead letter")
    assert c.get("/v1/deployments/decode").json()["last_error"] == "decode:iot_process: ?bad frame"
    api.ingest("/in", "d1", [b"!trap"])
    wait_for(lambda: "trap" in (c.get("/v1/deployments/decode").json()["last_error"] or ""), what="the newer error")


def test_the_history_keeps_rates_and_latencies_of_the_interval(api):
    from iotwasm.api.live import History

    c = api.admin
    push(c, ECHO_WASM, "echo")
    apply(c, deployment("echo", "echo:1"), http_route("r", "echo", "/in", "in/{device}", "out"))
    now = [100.0]
    cpu = [5.0]
    h = History(api.node, keep=3, clock=lambda: now[0], wall=lambda: now[0], cpu=lambda: cpu[0], rss=lambda: 4096)
    first = on_loop(api, h.sample)
    assert first["routes"]["r"]["in_s"] is None and first["node"]["cpu_pct"] is None   # nothing to compare yet
    api.ingest("/in", "d1", [b"m%d" % i for i in range(9)] + [b"?bad"])
    stats = api.node.routes["r"].runner.stats
    wait_for(lambda: stats.delivered == 9 and stats.dead_letters == 1, what="nine delivered, one dead letter")
    now[0], cpu[0] = 102.0, 5.5
    s = on_loop(api, h.sample)
    r, d = s["routes"]["r"], s["deployments"]["echo"]
    assert (r["in_s"], r["out_s"], r["dead_s"]) == (5.0, 4.5, 0.5)
    assert (d["in_s"], d["out_s"], d["dead_s"]) == (5.0, 4.5, 0.5)
    assert s["node"] == {"cpu_pct": 25.0, "rss_bytes": 4096, "outbox": 0}
    assert 0 < r["p50_ms"] <= r["p99_ms"] and 0 < d["p50_ms"] <= d["p99_ms"]
    assert r["where"]["echo"]["dead_letters"] == 1 and r["where"]["echo"]["last_error"] == "echo:iot_process: ?bad"
    assert d["last_error"] == "echo:iot_process: ?bad" and d["ns"] == "default"
    # an idle interval: rates 0, no latency to speak of
    now[0] = 103.0
    idle = on_loop(api, h.sample)["routes"]["r"]
    assert (idle["in_s"], idle["p50_ms"], idle["p99_ms"]) == (0.0, None, None)
    # the ring keeps the last three, chart numbers only, as columns; a tenant's view of it is its own
    now[0] = 104.0
    on_loop(api, h.sample)
    kept = h.history(lambda ns: True)
    assert kept["t"] == [102.0, 103.0, 104.0]
    assert kept["node"] == {"cpu_pct": [25.0, 0.0, 0.0], "rss_bytes": [4096] * 3, "outbox": [0] * 3}
    assert kept["routes"]["r"] == {"in_s": [5.0, 0.0, 0.0], "out_s": [4.5, 0.0, 0.0], "dead_s": [0.5, 0.0, 0.0],
                                   "p50_ms": [pytest.approx(r["p50_ms"], abs=1e-3), None, None],
                                   "p99_ms": [pytest.approx(r["p99_ms"], abs=1e-3), None, None]}
    assert kept["deployments"]["echo"]["in_s"] == [5.0, 0.0, 0.0]
    assert h.history(lambda ns: ns == "acme")["routes"] == {}
    assert h.history(lambda ns: True, since=102.0)["t"] == [103.0, 104.0]
    # the node's own sampler runs too, behind GET /v1/history
    # one that saw route r: on a loaded machine the sampler's first can come before r was applied
    wait_for(lambda: "r" in c.get("/v1/history").json()["routes"], what="samples of the node's sampler")
    got = c.get("/v1/history").json()
    assert got["keep"] == 600 and got["interval_s"] == 1.0 and len(got["routes"]["r"]["in_s"]) == len(got["t"])


@pytest.fixture()
def tenants(api):
    """Tenants acme and globex, each with a deployment and an http route of its own."""
    a = api.admin
    for name in ("acme", "globex"):
        assert a.put(f"/v1/tenants/{name}", json={"topic_prefix": f"{name}/"}).status_code == 200
        tok = api.token("operator", tenant=name, name=f"{name}-operator")
        c = api.client(tok)
        push(c, ECHO_WASM, f"{name}/echo")
        apply(c, deployment(f"{name}-decode", f"{name}/echo:1", namespace=name, publish=f"{name}/#",
                            subscribe=f"{name}/#"),
              http_route(f"{name}-in", f"{name}-decode", f"/{name}/in", f"{name}/in/{{device}}", f"{name}_out",
                         namespace=name, dead_letter=f"{name}/dead/{{route}}"))
        api.ingest(f"/{name}/in", "d1", [b"ok", b"?bad"])
    wait_for(lambda: all(len(api.node.state.dead_letters(f"{t}-in")) == 1 for t in ("acme", "globex")),
             what="a dead letter in each tenant's route")
    return {t: api.token("operator", tenant=t, name=f"{t}-streamer") for t in ("acme", "globex")}


def test_a_tenants_stream_carries_nothing_of_another_tenant(api, tenants):
    acme = Events(api, tenants["acme"])
    admin = Events(api, api.admin_token)
    try:
        wait_for(lambda: len(acme.of("sample")) >= 2 and len(admin.of("sample")) >= 2, 30, "two samples each")
        hello = acme.of("hello")[0]
        assert hello["you"]["tenant"] == "acme" and hello["fleet"] is False and hello["interval_s"] == 1.0
        assert acme.items[0][0] == "hello" and acme.items[1][0] == "history"
        sample = acme.of("sample")[-1]
        assert set(sample["routes"]) == {"acme-in"} and set(sample["deployments"]) == {"acme-decode"}
        assert sample["routes"]["acme-in"]["dead_letters"] == 1 and sample["node"]["rss_bytes"] > 0
        assert {"acme-in", "globex-in"} <= set(admin.of("sample")[-1]["routes"])
        # globex's events happen while acme's stream is open; then one of acme's
        g = api.client(tenants["globex"])
        assert g.post("/v1/deployments/globex-decode/suspend").status_code == 200
        wait_for(lambda: any(e["object"] == "globex-decode" for e in admin.of("event")), 30, "globex's event")
        assert api.client(tenants["acme"]).post("/v1/deployments/acme-decode/suspend").status_code == 200
        wait_for(lambda: any(e["object"] == "acme-decode" for e in acme.of("event")), 30, "acme's own event")
        wait_for(lambda: len(acme.of("sample")) >= 4, 30, "more samples")
        assert "globex" not in acme.text()
        assert api.client(tenants["acme"]).get("/v1/history").text.count("globex") == 0
    finally:
        acme.close()
        admin.close()


def test_dead_letters_are_browsed_and_replayed_by_the_routes_tenant_only(api, tenants):
    acme, globex = api.client(tenants["acme"]), api.client(tenants["globex"])
    mine = acme.get("/v1/dead-letters").json()
    assert [(d["route"], d["step"], d["function"], d["reason"]) for d in mine] == \
        [("acme-in", "acme-decode", "iot_process", "?bad")]
    assert mine[0]["payload"] == {"size": 4, "truncated": False, "text": "?bad"} and mine[0]["replayable"]
    assert mine[0]["module"]["ref"] == "acme/echo:1" and mine[0]["replayed"] is None
    the_id = mine[0]["id"]
    # another tenant sees none of them and cannot replay them; a viewer cannot replay at all
    assert all(d["route"] == "globex-in" for d in globex.get("/v1/dead-letters").json())
    assert globex.get("/v1/dead-letters", params={"route": "acme-in"}).status_code == 404
    r = globex.post("/v1/routes/acme-in/dead-letters/replay", json={"ids": [the_id]})
    assert r.status_code == 404
    globex_id = globex.get("/v1/dead-letters").json()[0]["id"]
    r = acme.post("/v1/routes/acme-in/dead-letters/replay", json={"ids": [globex_id, 10**9]})
    assert r.status_code == 200 and r.json()["replayed"] == []
    assert {s["reason"] for s in r.json()["skipped"]} == {"not a dead letter of route acme-in"}
    viewer = api.client(api.token("viewer", tenant="acme", name="acme-viewer"))
    assert viewer.post("/v1/routes/acme-in/dead-letters/replay", json={"ids": [the_id]}).status_code == 403
    assert acme.post("/v1/routes/acme-in/dead-letters/replay", json={"ids": []}).status_code == 422
    # the tenant's operator replays its own: it goes through the route again (rejected again by the
    # same module: a new dead letter, itself replayable), and the first is marked
    r = acme.post("/v1/routes/acme-in/dead-letters/replay", json={"ids": [the_id, the_id]})
    assert r.status_code == 200 and r.json() == {"route": "acme-in", "replayed": [the_id], "queued": [], "skipped": []}
    rows = acme.get("/v1/dead-letters", params={"route": "acme-in"}).json()
    assert len(rows) == 2 and rows[0]["id"] > the_id and rows[0]["replayed"] is None
    assert rows[1]["replayed"]["by"].startswith("acme-streamer") and not rows[1]["replayable"]
    assert api.node.routes["acme-in"].runner.stats.received == 3
    audit = api.admin.get("/v1/audit", params={"action": "route.dead-letters.replay"}).json()
    assert [(a["tenant"], a["target"]) for a in audit] == [("acme", "route/acme-in")] * 2
    assert "1 replayed" in audit[0]["detail"]
    # the latest results: each tenant its own
    assert [g["name"] for g in acme.get("/v1/results").json()] == ["acme-in"]
    assert acme.get("/v1/results").json()[0]["rows"][0]["payload"] == "ok"


def test_a_replayed_dead_letter_goes_on_from_where_it_failed(api):
    """At the step that refused it (earlier steps are not run again), or at the sinks when a
    sink failed; binary payloads are previewed as hex."""
    c = api.admin
    push(c, ECHO_WASM, "echo")
    push(c, PASS_WASM, "pass")
    port = free_port()
    hook = f"""apiVersion: iotwasm.io/v1
kind: Route
metadata: {{name: hooked}}
spec:
  source: {{http: {{path: /hook, topic: "hook/{{device}}"}}}}
  steps: [prep]
  sinks: [{{webhook: {{url: "http://127.0.0.1:{port}/x", timeout: 2s}}, storeAndForward: false}}]
"""
    route = http_route("r", "prep", "/in", "in/{device}", "out").replace("steps: [prep]", "steps: [prep, decode]")
    apply(c, deployment("prep", "pass:1"), deployment("decode", "echo:1"), route, hook)
    api.ingest("/in", "d1", [b"?\x00\xff"])
    api.ingest("/hook", "d9", [b"for the hook"])
    wait_for(lambda: len(c.get("/v1/dead-letters").json()) == 2, what="two dead letters")
    letters = {d["route"]: d for d in c.get("/v1/dead-letters").json()}
    assert letters["r"]["payload"] == {"size": 3, "truncated": False, "hex": "3f 00 ff"}
    assert letters["hooked"]["step"] == "hooked/0:webhook" and letters["hooked"]["function"] is None

    # the decoder is fixed; the replay enters at decode: prep does not see the message again
    apply(c, deployment("decode", "pass:1"))
    prep_before = c.get("/v1/deployments/prep").json()["messages"]
    r = c.post("/v1/routes/r/dead-letters/replay", json={"ids": [letters["r"]["id"]]})
    assert r.json()["replayed"] == [letters["r"]["id"]], r.text
    assert any(x["payload"] == {"base64": "PwD/"} for x in api.node.store.query("out"))
    assert c.get("/v1/deployments/prep").json()["messages"] == prep_before
    assert c.get("/v1/deployments/decode").json()["messages"] >= 1

    # the webhook answers now; the sink's dead letter goes straight to the sinks
    got: list[bytes] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            got.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        prep_before = c.get("/v1/deployments/prep").json()["messages"]
        r = c.post("/v1/routes/hooked/dead-letters/replay", json={"ids": [letters["hooked"]["id"]]})
        assert r.json()["replayed"] == [letters["hooked"]["id"]], r.text
        assert [json.loads(b) for b in got] == [{"topic": "hook/d9", "payload": "for the hook"}]
        assert c.get("/v1/deployments/prep").json()["messages"] == prep_before
    finally:
        server.shutdown()
        server.server_close()


def test_a_replay_into_a_held_route_answers_and_is_marked_once_through(api, monkeypatch):
    from iotwasm.api import data

    c = api.admin
    push(c, ECHO_WASM, "echo")
    apply(c, deployment("decode", "echo:1"), http_route("r", "decode", "/in", "in/{device}", "out"))
    api.ingest("/in", "d1", [b"?x"])
    the_id = wait_for(lambda: c.get("/v1/dead-letters").json(), what="a dead letter")[0]["id"]
    assert c.post("/v1/deployments/decode/suspend").status_code == 200   # the route holds what comes
    monkeypatch.setattr(data, "REPLAY_WAIT_S", 0.2)   # the answer does not wait for a held route
    r = c.post("/v1/routes/r/dead-letters/replay", json={"ids": [the_id]}).json()
    assert r == {"route": "r", "replayed": [], "queued": [the_id], "skipped": []}
    again = c.post("/v1/routes/r/dead-letters/replay", json={"ids": [the_id]}).json()
    assert again["skipped"] == [{"id": the_id, "reason": "being replayed"}]
    assert c.post("/v1/deployments/decode/resume").status_code == 200
    wait_for(lambda: c.get("/v1/dead-letters").json()[-1]["replayed"] is not None, 30, "marked once through")
    assert time.time() - c.get("/v1/dead-letters").json()[-1]["replayed"]["ts"] < 60
