"""Synchronous invoke on one node (`POST /v1/deployments/{name}/invoke`, `iotwasm invoke`):
outputs and dead letters in the answer, the deployment's limits and topic grants as in a route,
tenancy, audit, and the event loop free while a module spins."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import threading

import httpx
import pytest
import wasmtime
from apinode import ECHO_WASM, ApiNode, deployment, wait_for
from conftest import TEST_MODULES

CLI = [sys.executable, "-m", "iotwasm.cli.main"]
LOOP_WASM = bytes(wasmtime.wat2wasm((TEST_MODULES / "infinite_loop.wat").read_text()))


def spinning(name: str, namespace: str) -> str:
    return f"""apiVersion: iotwasm.io/v1
kind: Deployment
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  module: "loop:1"
  resources: {{memory: 16Mi, timeout: 200ms}}
  capabilities: {{topics: {{publish: ["#"], subscribe: ["#"]}}}}
"""


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    node = ApiNode(tmp_path_factory.mktemp("invoke")).start()
    admin = node.admin
    for t in ("acme", "globex"):
        assert admin.put(f"/v1/tenants/{t}", json={}).status_code == 200
    assert admin.put("/v1/tenants/fenced", json={"topic_prefix": "fenced/"}).status_code == 200
    assert admin.post("/v1/modules", content=ECHO_WASM, params={"name": "echo", "version": "1"}).status_code == 201
    assert admin.post("/v1/modules", content=LOOP_WASM, params={"name": "loop", "version": "1"}).status_code == 201
    docs = [deployment("echo-acme", "echo:1", "acme"),
            deployment("echo-narrow", "echo:1", "acme", subscribe="acme/in/#", publish="acme/out/#"),
            deployment("echo-fenced", "echo:1", "fenced", subscribe="fenced/#", publish="fenced/#"),
            spinning("spin", "acme")]
    r = admin.post("/v1/apply", content="---\n".join(docs), headers={"Content-Type": "application/yaml"})
    assert r.status_code == 200 and r.json()["problems"] == [], r.text
    node.tokens = {(role, t): node.token(role, t, f"{role}-{t}") for role in ("viewer", "operator")
                   for t in ("acme", "globex", "fenced")}
    yield node
    node.stop()


def call(api, name, messages, role="operator", tenant="acme", **kw):
    return api.client(api.tokens[(role, tenant)]).post(f"/v1/deployments/{name}/invoke",
                                                       json={"messages": messages}, **kw)


def test_outputs_and_dead_letters_come_back_in_the_answer(api):
    r = call(api, "echo-acme", [{"payload": "a"}, {"payload": "!trap"}, {"topic": "acme/x", "payload": "b"},
                                {"payload": "?bad"}])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["deployment"] == "echo-acme" and body["revision"] == 1
    assert [(o["index"], o["topic"], o["payload"]) for o in body["outputs"]] == [
        (0, "invoke/echo-acme", "a"), (2, "acme/x", "b")]
    dead = {d["index"]: d for d in body["dead_letters"]}
    assert sorted(dead) == [1, 3]
    assert dead[1]["kind"] == "trap" and "echo-acme" in dead[1]["error"]
    assert dead[3]["kind"] == "guest_error"


def test_bytes_that_are_not_text_go_both_ways_as_base64(api):
    raw = bytes(range(256))
    r = call(api, "echo-acme", [{"payload_b64": base64.b64encode(raw).decode()}])
    assert r.status_code == 200, r.text
    [out] = r.json()["outputs"]
    assert "payload" not in out and base64.b64decode(out["payload_b64"]) == raw


def test_topic_grants_apply_as_in_a_route(api):
    r = call(api, "echo-narrow", [{"topic": "acme/in/d1", "payload": "ok"}, {"topic": "acme/other", "payload": "no"}])
    assert r.status_code == 200, r.text
    body = r.json()
    # allowed in, but echoed on its own topic, which the publish grants do not cover
    assert body["outputs"] == []
    kinds = sorted((d["index"], d["kind"]) for d in body["dead_letters"])
    assert kinds == [(0, "capability"), (1, "capability")]
    errors = {d["index"]: d["error"] for d in body["dead_letters"]}
    assert "may not emit on 'acme/in/d1'" in errors[0] and "may not receive 'acme/other'" in errors[1]


def test_a_looping_module_ends_at_its_timeout_and_the_api_stays_responsive(api):
    answers: list[httpx.Response] = []
    t = threading.Thread(target=lambda: answers.append(call(api, "spin", [{"payload": "x"}])))
    t.start()
    # while the module spins, the API (the node's event loop) answers other calls
    for _ in range(5):
        assert api.admin.get("/v1/deployments/echo-acme").status_code == 200
    t.join(30)
    assert answers and answers[0].status_code == 200, answers
    [dead] = answers[0].json()["dead_letters"]
    assert dead["kind"] == "timeout" and "200" in dead["error"], dead


def test_tenancy_roles_and_audit(api):
    # another tenant's deployment does not exist for it (as for every other call)
    r = call(api, "echo-acme", [{"payload": "a"}], tenant="globex")
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    # reading is not invoking
    r = call(api, "echo-acme", [{"payload": "a"}], role="viewer")
    assert r.status_code == 403
    # a tenant confined to a topic prefix invokes under it only; the default topic is under it
    r = call(api, "echo-fenced", [{"payload": "a"}], tenant="fenced")
    assert r.status_code == 200 and r.json()["outputs"][0]["topic"] == "fenced/invoke/echo-fenced", r.text
    r = call(api, "echo-fenced", [{"topic": "elsewhere/x", "payload": "a"}], tenant="fenced")
    assert r.status_code == 403 and "outside the topic prefix" in r.json()["detail"]
    # invocations are audited as traffic: one row per caller and deployment per sweep, with the counts
    r = call(api, "echo-fenced", [{"payload": "b"}, {"payload": "!c"}], tenant="fenced")
    assert r.status_code == 200

    def rows():
        return [e for e in api.admin.get("/v1/audit", params={"action": "deployment.invoke"}).json()
                if e["action"] == "deployment.invoke"]
    def fenced_ok():
        return [e for e in rows() if e["outcome"] == "ok" and e["target"] == "deployment/echo-fenced"]

    def counted(rows, at):   # "2 invocation(s): 3 message(s), 2 output(s), 1 dead letter(s)"
        return sum(int(e["detail"].replace(":", ",").split(", ")[at].split()[0]) for e in rows)
    ok = wait_for(lambda: (r := fenced_ok()) and counted(r, 0) == 2 and r, what="the invocations' audit rows")
    assert all(e["tenant"] == "fenced" and e["actor"].startswith("operator-fenced") for e in ok), ok
    assert [counted(ok, i) for i in (1, 2, 3)] == [3, 2, 1], ok
    assert any(e["outcome"] == "denied" and "outside the topic prefix" in e["detail"] for e in rows())


def test_bounded_input_and_not_running(api):
    assert call(api, "echo-acme", []).status_code == 422
    assert call(api, "echo-acme", [{"payload": "a"}] * 1001).status_code == 422
    assert call(api, "echo-acme", [{"payload": "x" * (3 * 1024 * 1024)}]).status_code == 413
    r = call(api, "echo-acme", [{"payload_b64": "not base64!"}])
    assert r.status_code == 422 and "messages[0]" in r.json()["detail"]
    r = call(api, "echo-acme", [{"payload": "a", "payload_b64": "YQ=="}])
    assert r.status_code == 422
    assert api.admin.post("/v1/deployments/echo-narrow/suspend").status_code == 200
    try:
        r = call(api, "echo-narrow", [{"topic": "acme/in/x", "payload": "a"}])
        assert r.status_code == 409 and "suspended" in r.json()["detail"], r.text
    finally:
        assert api.admin.post("/v1/deployments/echo-narrow/resume").status_code == 200


def test_cli_invoke_is_binary_safe(api):
    env = {**os.environ, "IOTWASM_URL": api.url, "IOTWASM_TOKEN": api.tokens[("operator", "acme")]}
    env.pop("IOTWASM_CONTEXT", None)
    raw = bytes(range(1, 256)).replace(b"\n", b"") + b"\xff\xfe"
    r = subprocess.run([*CLI, "invoke", "echo-acme"], input=raw, capture_output=True, check=False, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout == raw + b"\n"
    r = subprocess.run([*CLI, "invoke", "echo-acme", "--lines"], input=b"one\n!two\nthree\n",
                       capture_output=True, check=False, env=env, timeout=60)
    assert r.returncode == 3, r.stderr
    assert r.stdout == b"one\nthree\n"
    assert b"dead letter (trap) message 2" in r.stderr
    r = subprocess.run([*CLI, "invoke", "echo-acme", "--data", "hi", "-o", "json"], capture_output=True, check=False,
                       env=env, timeout=60)
    assert r.returncode == 0 and b'"payload": "hi"' in r.stdout, r.stderr
