"""Circuit breakers and traffic splits seen through a real node's API: describe and metrics."""

from __future__ import annotations

import pytest

from apinode import ApiNode, deployment, http_route, wait_for
from test_api import apply, push
from test_breaker import Webhook


@pytest.fixture()
def api(tmp_path):
    n = ApiNode(tmp_path).start()
    yield n
    n.stop()


@pytest.fixture
def webhook():
    w = Webhook()
    yield w
    w.close()


def metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_a_dead_webhook_opens_the_breaker_and_recovery_closes_it_losing_nothing(api, webhook):
    c = api.admin
    push(c, name="echo", version="1")
    route = http_route("r", "echo", "/in", "in/{device}", "unused").replace(
        "sinks: [{store: {table: unused}}]",
        f'sinks: [{{webhook: {{url: "{webhook.url}"}}, '
        f'circuitBreaker: {{failures: 2, openFor: 20ms, maxOpenFor: 100ms}}}}]')
    assert apply(c, deployment("echo", "echo:1") + "---\n" + route).status_code == 200
    api.ingest("/in", "d1", [b'{"n": %d}' % i for i in range(12)])

    def breaker():
        return c.get("/v1/routes/r").json()["breakers"]["r/0:webhook"]

    wait_for(lambda: breaker()["opened"] >= 2, what="the breaker opened (and a probe failed)")
    assert breaker()["state"] in ("open", "half-open") and breaker()["last_error"].endswith("answered 503")
    text = c.get("/metrics").text
    assert metric(text, "iotwasm_sink_circuit_opened_total") >= 2
    assert metric(text, "iotwasm_route_sink_backlog") == 12      # all kept in the outbox
    webhook.down = False
    wait_for(lambda: len([1 for s, _ in webhook.hits if s == 200]) == 12, what="12 delivered")
    wait_for(lambda: breaker()["state"] == "closed", what="closed")
    assert [b for s, b in webhook.hits if s == 200] == \
        [b'{"topic": "in/d1", "payload": {"n": %d}}' % i for i in range(12)]
    assert metric(c.get("/metrics").text, "iotwasm_sink_circuit_state") == 0


def test_a_split_is_visible_in_describe_and_metrics(api):
    c = api.admin
    push(c, name="echo", version="1")
    route = http_route("r", "a", "/in", "in/{device}", "out").replace(
        "  steps: [a]\n", "  steps: [a]\n  split: {a: {deployment: b, weight: 30, seed: 3}}\n")
    assert apply(c, deployment("a", "echo:1") + "---\n" + deployment("b", "echo:1") + "---\n"
                 + route).status_code == 200
    api.ingest("/in", "d1", [b"x"] * 40)
    wait_for(lambda: api.node.store.count("out") == 40, what="40 rows")
    view = c.get("/v1/routes/r").json()["splits"]["a"]
    got = view["messages"]
    assert got["a"] + got["b"] == 40 and got["b"] > 0 and got["fallback"] == 0
    text = c.get("/metrics").text
    assert f'iotwasm_route_split_messages_total{{deployment="b",namespace="default",route="r",step="a"}} {got["b"]}.0' in text


def test_tenants_split_only_to_their_own_deployments_and_need_an_admin_for_private_http(api):
    a = api.admin
    for name in ("acme", "globex"):
        assert a.put(f"/v1/tenants/{name}", json={"topic_prefix": f"{name}/"}).status_code == 200
    acme = api.client(api.token("operator", "acme"))
    globex = api.client(api.token("operator", "globex"))
    push(acme, name="acme/echo", version="1")
    push(globex, name="globex/echo", version="1")
    r = apply(acme, deployment("sensor", "acme/echo:1", namespace="acme", publish="acme/#", subscribe="acme/#"))
    assert r.status_code == 200, r.text
    g = deployment("g", "globex/echo:1", namespace="globex", publish="globex/#", subscribe="globex/#")
    route = http_route("gr", "g", "/globex/in", "globex/in/{device}", "g", namespace="globex",
                       dead_letter="globex/dead").replace(
        "  steps: [g]\n", "  steps: [g]\n  split: {g: {deployment: sensor, weight: 10}}\n")
    r = apply(globex, g + "---\n" + route)
    assert r.status_code == 403 and "spec.split: 'sensor' is a deployment of another namespace" in r.json()["detail"]

    def with_http(grant: str) -> str:
        return g.replace("host: [log]", "host: [log, http]").replace(
            "topics:", f"http: {grant}, topics:")

    r = apply(globex, with_http('{allow: ["http://169.254.169.254/*"]}'))
    assert r.status_code == 403 and "needs a node admin token" in r.json()["detail"], r.text
    r = apply(globex, with_http('{allow: ["https://api.example.com/*"], privateNetworks: true}'))
    assert r.status_code == 403 and "privateNetworks" in r.json()["detail"]
    r = apply(globex, with_http('{allow: ["https://api.example.com/*"]}'))
    assert r.status_code == 200 and r.json()["problems"] == [], r.text
    # the node's admin may
    r = apply(a, with_http('{allow: ["http://127.0.0.1:9/*"]}').replace("name: g,", "name: g2,"))
    assert r.status_code == 200, r.text
