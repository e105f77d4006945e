"""Every operation of the published OpenAPI document, called by every kind of caller: no token,
a wrong token, and each role without tenant, of the tenant that owns the objects (acme) and of
another tenant (globex). The document says who may call what (``x-iotwasm-role``,
``x-iotwasm-tenant-tokens``) and what a success answers; the API must answer exactly that —
401, 403, 404 for another tenant's object, or the documented success — and every refusal as a
problem document. An operation the table below does not know how to call fails the test."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import wasmtime

from apinode import ECHO_WASM, ApiNode, deployment, http_route
from conftest import ECHO_WAT

from iotwasm.registry.signing import generate_key

ROLES = ("viewer", "operator", "admin")
OWNER, OTHER = "acme", "globex"
_n = itertools.count(1)


def fresh(prefix: str) -> str:
    return f"{prefix}-{next(_n)}"


@dataclass
class Caller:
    label: str
    token: str | None
    role: str | None = None       # None: no valid token
    tenant: str | None = None

    @property
    def namespace(self) -> str:
        return self.tenant or OWNER   # a caller without tenant acts on the owner's objects


@dataclass
class Call:
    """How to call one operation successfully: path parameters, request keywords, and whether
    each call needs objects of its own (it deletes or changes what it is given)."""
    prepare: Callable[[Matrix, Caller], dict[str, Any]]
    request: Callable[[Matrix, Caller, dict[str, Any]], dict[str, Any]] = field(default=lambda m, c, p: {})


def rule(name: str, ns: str) -> str:
    return (f"apiVersion: iotwasm.io/v1\nkind: Rule\nmetadata: {{name: {name}, namespace: {ns}}}\n"
            f"spec:\n  tags: [t]\n  sql: SELECT v FROM \"{ns}/in/{{d}}\" WHERE v > 1\n"
            f"  actions: [{{store: {{table: hot}}}}]\n")


class Matrix:
    """A node with tenants acme and globex, acme's objects, and helpers making fresh ones."""

    def __init__(self, api: ApiNode):
        self.api, self.admin = api, api.admin
        for t in (OWNER, OTHER):
            assert self.admin.put(f"/v1/tenants/{t}", json={}).status_code == 200
        self.tokens = {(r, t): api.token(r, t, f"{r}-{t or 'node'}") for r in ROLES for t in (None, OWNER, OTHER)}
        self.owner = api.client(self.tokens[("operator", OWNER)])
        assert self.admin.post("/v1/modules", content=ECHO_WASM, params={"name": "echo", "version": "1"}).status_code == 201
        self.module = self.push_module()
        self.deployment = self.apply_deployment()
        self.route = self.apply(http_route(fresh("r"), self.deployment, f"/{OWNER}/in", f"{OWNER}/in/{{device}}",
                                           "out", OWNER))
        self.rule = self.apply(rule(fresh("rule"), OWNER))
        _, self.public_pem = generate_key()
        self.token_id = _token_id(self)
        self.device = self.make_device(OWNER)

    def standing(self, path: str) -> dict[str, Any]:
        """Path parameters naming the owner's long-lived objects: for calls that are refused
        (they must not be told apart from calls on fresh objects)."""
        for prefix, params in (("/v1/deployments/", {"name": self.deployment}), ("/v1/routes/", {"name": self.route}),
                               ("/v1/rules/", {"name": self.rule}), ("/v1/modules/", {"ref": self.module}),
                               ("/v1/tokens/", {"token_id": self.token_id}),
                               ("/v1/tenants/", {"name": OWNER, "key_id": "0" * 16}),
                               ("/v1/alerts/", {"name": "standing"}),
                               ("/v1/fleet/", {"name": "x", "action": "pause"}),
                               ("/v1/devices/", {"namespace": OWNER, "device": self.device})):
            if path.startswith(prefix):
                return params
        return {}

    def apply(self, text: str, client: httpx.Client | None = None) -> str:
        r = (client or self.owner).post("/v1/apply", content=text, headers={"Content-Type": "application/yaml"})
        assert r.status_code == 200 and r.json()["problems"] == [], r.text
        return r.json()["applied"][0]["name"]

    def apply_deployment(self, name: str | None = None, memory: str = "16Mi") -> str:
        return self.apply(deployment(name or fresh("d"), "echo:1", OWNER, memory=memory))

    def make_device(self, namespace: str) -> str:
        """A device of `namespace` (desired state set before it ever connected)."""
        device = fresh("dev")
        r = self.admin.patch(f"/v1/devices/{namespace}/{device}/desired", json={"fan": 1})
        assert r.status_code == 200, r.text
        return device

    def push_module(self) -> str:
        wasm = bytes(wasmtime.wat2wasm(ECHO_WAT.replace("(i32.const 1024)", f"(i32.const {1024 + 16 * next(_n)})")))
        r = self.owner.post("/v1/modules", content=wasm, headers={"Content-Type": "application/wasm"})
        assert r.status_code == 201, r.text
        return r.json()["digest"]


def _body(kind: str, content: bytes | str) -> dict[str, Any]:
    return {"content": content, "headers": {"Content-Type": kind}}


def _token_id(m: Matrix) -> str:
    r = m.admin.post("/v1/tokens", json={"name": fresh("tok"), "role": "viewer", "tenant": OWNER})
    return r.json()["id"]


def _suspended(m: Matrix) -> str:
    name = m.apply_deployment()
    assert m.admin.post(f"/v1/deployments/{name}/suspend").status_code == 200
    return name


def _two_revisions(m: Matrix) -> str:
    name = m.apply_deployment()
    m.apply_deployment(name, memory="32Mi")
    return name


def _trusted_key(m: Matrix) -> str:
    tenant = fresh("keys")
    m.admin.put(f"/v1/tenants/{tenant}", json={})
    key = m.admin.post(f"/v1/tenants/{tenant}/keys", json={"public_pem": m.public_pem.decode()}).json()["key_id"]
    return {"name": tenant, "key_id": key}


def _alert(m: Matrix) -> str:
    name = fresh("alert")
    m.admin.put(f"/v1/alerts/{name}", json={"metric": "outbox_backlog", "above": 1e9, "topic": "alerts/x"})
    return name


def same(attr: str) -> Callable[[Matrix, Caller], dict[str, Any]]:
    """The owner's long-lived object, for calls that only read it or change it reversibly."""
    return lambda m, c: {"name": getattr(m, attr)} if attr != "module" else {"ref": m.module}


CALLS: dict[tuple[str, str], Call] = {
    ("GET", "/metrics"): Call(lambda m, c: {}),
    ("GET", "/v1/node"): Call(lambda m, c: {}),
    ("POST", "/v1/modules"): Call(lambda m, c: {}, lambda m, c, p: {
        **_body("application/wasm", bytes(wasmtime.wat2wasm(ECHO_WAT.replace("(i32.const 1024)",
                                                                             f"(i32.const {4096 + next(_n)})")))),
        # a tenant publishes under its own namespace (security.md: module names)
        "params": {"name": (f"{c.tenant}/" if c.tenant else "") + fresh("pushed"), "version": "1"}}),
    ("GET", "/v1/modules"): Call(lambda m, c: {}),
    ("GET", "/v1/modules/{ref}"): Call(same("module")),
    ("DELETE", "/v1/modules/{ref}"): Call(lambda m, c: {"ref": m.push_module()}),
    ("POST", "/v1/apply"): Call(lambda m, c: {}, lambda m, c, p: _body(
        "application/yaml", deployment(fresh("applied"), "echo:1", c.namespace))),
    ("GET", "/v1/deployments"): Call(lambda m, c: {}),
    ("GET", "/v1/deployments/{name}"): Call(same("deployment")),
    ("DELETE", "/v1/deployments/{name}"): Call(lambda m, c: {"name": m.apply_deployment()}),
    ("POST", "/v1/deployments/{name}/scale"): Call(same("deployment"), lambda m, c, p: {"json": {"replicas": 1}}),
    ("POST", "/v1/deployments/{name}/suspend"): Call(lambda m, c: {"name": m.apply_deployment()}),
    ("POST", "/v1/deployments/{name}/resume"): Call(lambda m, c: {"name": _suspended(m)}),
    ("GET", "/v1/deployments/{name}/history"): Call(same("deployment")),
    ("POST", "/v1/deployments/{name}/rollback"): Call(lambda m, c: {"name": _two_revisions(m)},
                                                      lambda m, c, p: {"json": {}}),
    ("GET", "/v1/deployments/{name}/logs"): Call(same("deployment")),
    ("POST", "/v1/deployments/{name}/invoke"): Call(same("deployment"), lambda m, c, p: {
        "json": {"messages": [{"payload": "x"}]}}),
    ("GET", "/v1/routes"): Call(lambda m, c: {}),
    ("GET", "/v1/routes/{name}"): Call(same("route")),
    ("DELETE", "/v1/routes/{name}"): Call(lambda m, c: {"name": m.apply(http_route(
        fresh("r"), m.deployment, f"/{OWNER}/{next(_n)}", f"{OWNER}/x/{{device}}", "out", OWNER))}),
    ("GET", "/v1/events"): Call(lambda m, c: {}),
    ("GET", "/v1/dead-letters"): Call(lambda m, c: {}),
    # an id the route never had: answered 200, skipped with the reason
    ("POST", "/v1/routes/{name}/dead-letters/replay"): Call(same("route"), lambda m, c, p: {"json": {"ids": [10**9]}}),
    ("GET", "/v1/results"): Call(lambda m, c: {}),
    ("GET", "/v1/history"): Call(lambda m, c: {}),
    ("GET", "/v1/stream"): Call(lambda m, c: {}),
    ("GET", "/v1/events/stream"): Call(lambda m, c: {}),
    ("POST", "/v1/tokens"): Call(lambda m, c: {}, lambda m, c, p: {
        "json": {"name": fresh("made"), "role": "viewer", "tenant": c.tenant}}),
    ("GET", "/v1/tokens"): Call(lambda m, c: {}),
    ("DELETE", "/v1/tokens/{token_id}"): Call(lambda m, c: {"token_id": _token_id(m)}),
    ("GET", "/v1/tenants"): Call(lambda m, c: {}),
    ("GET", "/v1/tenants/{name}"): Call(lambda m, c: {"name": OWNER}),
    ("PUT", "/v1/tenants/{name}"): Call(lambda m, c: {"name": fresh("tenant")}, lambda m, c, p: {"json": {}}),
    ("DELETE", "/v1/tenants/{name}"): Call(lambda m, c: {"name": _trusted_key(m)["name"]}),
    ("POST", "/v1/tenants/{name}/keys"): Call(lambda m, c: {"name": OWNER},
                                              lambda m, c, p: {"json": {"public_pem": m.public_pem.decode()}}),
    ("DELETE", "/v1/tenants/{name}/keys/{key_id}"): Call(lambda m, c: _trusted_key(m)),
    ("GET", "/v1/alerts"): Call(lambda m, c: {}),
    ("PUT", "/v1/alerts/{name}"): Call(lambda m, c: {"name": fresh("alert")}, lambda m, c, p: {
        "json": {"metric": "outbox_backlog", "above": 1e9, "topic": "alerts/x"}}),
    ("DELETE", "/v1/alerts/{name}"): Call(lambda m, c: {"name": _alert(m)}),
    ("GET", "/v1/audit"): Call(lambda m, c: {}),
    ("GET", "/v1/audit/verify"): Call(lambda m, c: {}),
    ("GET", "/v1/audit/anchor"): Call(lambda m, c: {}),
    ("GET", "/v1/rules"): Call(lambda m, c: {}),
    ("GET", "/v1/rules/{name}"): Call(same("rule")),
    ("DELETE", "/v1/rules/{name}"): Call(lambda m, c: {"name": m.apply(rule(fresh("rule"), OWNER))}),
    ("POST", "/v1/rules/{name}/enable"): Call(same("rule")),
    ("POST", "/v1/rules/{name}/disable"): Call(same("rule")),
    ("POST", "/v1/rules/enable"): Call(lambda m, c: {}, lambda m, c, p: {"json": {"tag": "t"}}),
    ("POST", "/v1/rules/disable"): Call(lambda m, c: {}, lambda m, c, p: {"json": {"tag": "t"}}),
    # a node not in a fleet: the documented answer of every fleet view is 404 (not-in-fleet)
    ("GET", "/v1/fleet"): Call(lambda m, c: {}),
    ("GET", "/v1/fleet/nodes"): Call(lambda m, c: {}),
    ("GET", "/v1/fleet/deployments"): Call(lambda m, c: {}),
    ("GET", "/v1/fleet/rollouts"): Call(lambda m, c: {}),
    ("GET", "/v1/fleet/devices"): Call(lambda m, c: {}),
    ("POST", "/v1/fleet/rollouts/{name}/{action}"): Call(lambda m, c: {"name": "x", "action": "pause"}),
    ("GET", "/v1/devices"): Call(lambda m, c: {}),
    ("GET", "/v1/devices/{namespace}/{device}"): Call(
        lambda m, c: {"namespace": c.namespace, "device": m.make_device(c.namespace)}),
    ("PATCH", "/v1/devices/{namespace}/{device}/desired"): Call(
        lambda m, c: {"namespace": c.namespace, "device": m.make_device(c.namespace)},
        lambda m, c, p: {"json": {"fan": 2}, "headers": {"If-Match": '"1"'}}),
    # nobody answers: the command stays unacknowledged, the answer is its record
    ("POST", "/v1/devices/{namespace}/{device}/commands"): Call(
        lambda m, c: {"namespace": c.namespace, "device": m.make_device(c.namespace)},
        lambda m, c, p: {"json": {"name": "blink", "timeout": "1s", "retries": 0}}),
    ("GET", "/v1/devices/{namespace}/{device}/commands"): Call(
        lambda m, c: {"namespace": c.namespace, "device": m.make_device(c.namespace)}),
}
PUBLIC = {("GET", "/healthz"), ("GET", "/readyz")}


def expected(op: dict, path: str, c: Caller) -> tuple[int, str | None]:
    """The status the document promises `c`, and the problem type (None for a success)."""
    if c.role is None:
        return 401, "unauthorized"
    if ROLES.index(c.role) < ROLES.index(op["x-iotwasm-role"]):
        return 403, "forbidden"
    if c.tenant is not None and op["x-iotwasm-tenant-tokens"] == "none":
        return 403, "forbidden"
    if path.startswith("/v1/fleet"):
        return 404, "not-in-fleet"
    if c.tenant == OTHER and "{" in path:
        return 404, "not-found"
    success = [int(s) for s in op["responses"] if s.startswith("2")]
    assert len(success) == 1, (path, op["responses"].keys())
    return success[0], None


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    api = ApiNode(tmp_path_factory.mktemp("matrix")).start()
    yield Matrix(api)
    api.stop()


def test_every_operation_answers_every_caller_as_documented(matrix):
    m, api = matrix, matrix.api
    doc = m.admin.get("/openapi.json").json()
    ops = {(method.upper(), path): op for path, item in doc["paths"].items() for method, op in item.items()}
    assert set(ops) == set(CALLS) | PUBLIC, "an operation is missing from CALLS (or gone from the API)"
    callers = [Caller("no token", None), Caller("wrong token", "iot_" + "x" * 43)]
    callers += [Caller(f"{r} of {t or 'the node'}", m.tokens[(r, t)], r, t) for r in ROLES for t in (None, OWNER, OTHER)]
    seen: dict[int, int] = {}
    for (method, path), call in CALLS.items():
        op = ops[(method, path)]
        assert op["security"] == [{"HTTPBearer": []}], (method, path)
        for c in callers:
            status, kind = expected(op, path, c)
            params = call.prepare(m, c) if status < 300 else m.standing(path)
            url = path.format(**params)
            kw = call.request(m, c, params)
            headers = {**kw.pop("headers", {}), **({"Authorization": f"Bearer {c.token}"} if c.token else {})}
            with httpx.stream(method, api.url + url, headers=headers, timeout=30, **kw) as r:
                body = r.read() if not r.headers.get("content-type", "").startswith("text/event-stream") else b""
            where = f"{method} {url} by {c.label}: {r.status_code} {body[:300]!r}"
            assert r.status_code == status, where
            assert str(status) in op["responses"], f"{where}: status not in the document"
            if kind is not None:
                assert r.headers["content-type"] == "application/problem+json", where
                assert httpx.Response(status, content=body).json()["type"].endswith("/" + kind), where
            seen[status] = seen.get(status, 0) + 1
    assert {401, 403, 404, 200, 201} <= set(seen), seen
    assert seen[401] == 2 * len(CALLS)
