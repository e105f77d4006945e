"""What each caller may see of a node shared by tenants: metrics, readiness, the node's own
description and the problems an apply answers — a tenant its own, a token without tenant
everything, an anonymous probe whether the node is ready and why in general words only."""

from __future__ import annotations

import httpx
import pytest

from apinode import ECHO_WASM, ApiNode, deployment, http_route, wait_for


@pytest.fixture()
def shared(tmp_path):
    """A node with tenants acme (a route that works, one that cannot start, a rule) and globex
    (a deployment of its own)."""
    n = ApiNode(tmp_path).start()
    a = n.admin
    for t in ("acme", "globex"):
        assert a.put(f"/v1/tenants/{t}", json={"topic_prefix": f"{t}/"}).status_code == 200
    assert a.post("/v1/modules", content=ECHO_WASM, params={"name": "echo", "version": "1"}).status_code == 201
    n.acme = n.client(n.token("operator", "acme", "acme-ops"))
    n.globex = n.client(n.token("operator", "globex", "globex-ops"))
    r = n.acme.post("/v1/apply", content=deployment("acme-sensor", "echo:1", "acme", publish="acme/#",
                                                    subscribe="acme/#")
                    + "---\n" + http_route("acme-in", "acme-sensor", "/acme/in", "acme/in/{device}", "acme_out",
                                           "acme", dead_letter="acme/dead")
                    + "---\n" + http_route("acme-broken", "acme-ghost", "/acme/b", "acme/b/{device}", "b", "acme",
                                           dead_letter="acme/dead")
                    + "---\napiVersion: iotwasm.io/v1\nkind: Rule\nmetadata: {name: acme-hot, namespace: acme}\n"
                      "spec:\n  sql: SELECT v FROM \"acme/in/{d}\" WHERE v > 1\n"
                      "  actions: [{store: {table: acme_hot}}]\n")
    assert r.status_code == 200, r.text
    assert [p.split(":")[0] for p in r.json()["problems"]] == ["Route acme-broken"]
    r = n.globex.post("/v1/apply", content=deployment("globex-x", "echo:1", "globex", publish="globex/#",
                                                      subscribe="globex/#"))
    assert r.status_code == 200 and r.json()["problems"] == [], r.text
    n.ingest("/acme/in", "d1", [b"1", b"2"])
    wait_for(lambda: n.node.store.count("acme_out") == 2, what="acme's route works")
    yield n
    n.stop()


def test_a_tenant_scrapes_only_its_own_series(shared):
    globex = shared.globex.get("/metrics").text
    assert 'deployment="globex-x"' in globex and "iotwasm_node_ready 0.0" in globex
    assert "acme" not in globex, [ln for ln in globex.splitlines() if "acme" in ln][:3]
    for node_wide in ("iotwasm_api_requests_total", "iotwasm_node_outbox_backlog", "iotwasm_node_dead_letters",
                      "iotwasm_guest_log_lines_suppressed", "process_cpu_seconds_total",
                      "python_gc_collections_total"):
        assert node_wide not in globex
    acme = shared.acme.get("/metrics").text
    for series in ('iotwasm_route_delivered_total{namespace="acme",route="acme-in"} 2.0',
                   'iotwasm_route_latency_ms_count{namespace="acme",route="acme-in"} 2.0',
                   'iotwasm_rule_received_total{namespace="acme",rule="acme-hot"}',
                   'iotwasm_deployment_messages_total{deployment="acme-sensor",namespace="acme"} 2.0'):
        assert series in acme, series
    assert "globex" not in acme
    everything = shared.admin.get("/metrics").text
    assert 'deployment="globex-x"' in everything and 'route="acme-in"' in everything
    assert "iotwasm_api_requests_total" in everything
    # the process and its garbage collector, for whoever sees the whole node
    assert "process_cpu_seconds_total" in everything and "process_resident_memory_bytes" in everything
    assert 'python_gc_collections_total{generation="2"}' in everything


def test_readiness_says_why_as_far_as_the_caller_may_see(shared):
    url = shared.url + "/readyz"
    anonymous = httpx.get(url)
    assert anonymous.status_code == 503 and anonymous.json() == {"ready": False, "reasons": ["manifest problems"]}
    wrong = httpx.get(url, headers={"Authorization": "Bearer iot_wrong"})  # a probe is never refused
    assert wrong.status_code == 503 and wrong.json() == anonymous.json()
    r = shared.globex.get("/readyz")
    assert r.status_code == 503 and r.json()["reasons"] == ["manifest problems (of other namespaces)"]
    r = shared.acme.get("/readyz")
    assert r.json()["reasons"] == ["1 manifest problem(s): Route acme-broken: step 'acme-ghost' is not a deployment "
                                   "on this node"]
    assert shared.admin.get("/readyz").json()["reasons"] == r.json()["reasons"]
    node = shared.globex.get("/v1/node").json()
    assert node["readiness"] == {"ready": False, "reasons": ["manifest problems (of other namespaces)"]}
    assert node["deployments"] == 1 and node["manifests"] is None and node["outbox_backlog"] is None
    assert "acme" not in shared.globex.get("/v1/node").text


def test_an_apply_answers_the_problems_of_what_it_applied_only(shared):
    # a name that appears inside acme's problem text ("… is not a deployment on this node")
    r = shared.globex.post("/v1/apply", content=deployment("deployment", "echo:1", "globex", publish="globex/#",
                                                           subscribe="globex/#"))
    assert r.status_code == 200 and r.json()["problems"] == [], r.text
    # a problem of one's own is answered
    r = shared.globex.post("/v1/apply", content=http_route("globex-r", "nowhere", "/globex/r", "globex/r/{device}",
                                                           "g", "globex", dead_letter="globex/dead"))
    assert r.json()["problems"] == ["Route globex-r: step 'nowhere' is not a deployment on this node"]


def test_a_tenant_is_told_the_node_s_files_are_invalid_not_what_they_hold(tmp_path):
    files = tmp_path / "manifests"
    files.mkdir()
    (files / "secret-plans.yaml").write_text("apiVersion: iotwasm.io/v1\nkind: Nope\nmetadata: {name: plan-b}\n")
    n = ApiNode(tmp_path, manifests=files).start()
    try:
        assert n.admin.post("/v1/modules", content=ECHO_WASM, params={"name": "echo", "version": "1"}).status_code == 201
        tenant = n.client(n.token("operator", "globex"))
        r = tenant.post("/v1/apply", content=deployment("g", "echo:1", "globex"))
        assert r.json()["problems"] == ["stored, but not reconciled while the node's manifest files are invalid"]
        r = n.admin.post("/v1/apply", content=deployment("plain", "echo:1"))
        assert "secret-plans.yaml" in r.json()["problems"][-1] and "plan-b" in r.json()["problems"][-1]
        assert tenant.get("/readyz").json()["reasons"] == ["manifest problems (of other namespaces)"]
        assert "plan-b" in n.admin.get("/readyz").json()["reasons"][0]
    finally:
        n.stop()
