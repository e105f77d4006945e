"""Security of the management API: every route authorised, tenants isolated, signatures
enforced at upload and at load, the audit chain detects an edited row."""

from __future__ import annotations

import base64
import sqlite3

import httpx
import pytest
import wasmtime

from apinode import ECHO_WASM, ApiNode, apply, deployment, http_route, push, wait_for
from conftest import ECHO_WAT
from iotwasm.api.audit import AuditLog, DenialThrottle
from iotwasm.api.security import SecurityStore, hash_token, utc
from iotwasm.registry.signing import generate_key, load_private, sign_digest
from iotwasm.engine.module import digest_of

# every route of the API with the weakest role allowed to call it; the test below fails when
# a route is added without being listed here
ROUTES = {
    ("GET", "/metrics"): "viewer",
    ("GET", "/v1/node"): "viewer",
    ("POST", "/v1/modules"): "operator",
    ("GET", "/v1/modules"): "viewer",
    ("GET", "/v1/modules/{ref}"): "viewer",
    ("DELETE", "/v1/modules/{ref}"): "operator",
    ("POST", "/v1/apply"): "operator",
    ("GET", "/v1/deployments"): "viewer",
    ("GET", "/v1/deployments/{name}"): "viewer",
    ("DELETE", "/v1/deployments/{name}"): "operator",
    ("POST", "/v1/deployments/{name}/scale"): "operator",
    ("POST", "/v1/deployments/{name}/suspend"): "operator",
    ("POST", "/v1/deployments/{name}/resume"): "operator",
    ("GET", "/v1/deployments/{name}/history"): "viewer",
    ("POST", "/v1/deployments/{name}/rollback"): "operator",
    ("GET", "/v1/deployments/{name}/logs"): "viewer",
    ("POST", "/v1/deployments/{name}/invoke"): "operator",
    ("GET", "/v1/devices"): "viewer",
    ("GET", "/v1/devices/{namespace}/{device}"): "viewer",
    ("PATCH", "/v1/devices/{namespace}/{device}/desired"): "operator",
    ("POST", "/v1/devices/{namespace}/{device}/commands"): "operator",
    ("GET", "/v1/devices/{namespace}/{device}/commands"): "viewer",
    ("GET", "/v1/routes"): "viewer",
    ("GET", "/v1/routes/{name}"): "viewer",
    ("DELETE", "/v1/routes/{name}"): "operator",
    ("GET", "/v1/rules"): "viewer",
    ("GET", "/v1/rules/{name}"): "viewer",
    ("DELETE", "/v1/rules/{name}"): "operator",
    ("POST", "/v1/rules/{name}/enable"): "operator",
    ("POST", "/v1/rules/{name}/disable"): "operator",
    ("POST", "/v1/rules/enable"): "operator",
    ("POST", "/v1/rules/disable"): "operator",
    ("GET", "/v1/events"): "viewer",
    ("GET", "/v1/events/stream"): "viewer",
    ("POST", "/v1/tokens"): "admin",
    ("GET", "/v1/tokens"): "admin",
    ("DELETE", "/v1/tokens/{token_id}"): "admin",
    ("GET", "/v1/tenants"): "viewer",
    ("GET", "/v1/tenants/{name}"): "viewer",
    ("PUT", "/v1/tenants/{name}"): "admin",
    ("DELETE", "/v1/tenants/{name}"): "admin",
    ("POST", "/v1/tenants/{name}/keys"): "admin",
    ("DELETE", "/v1/tenants/{name}/keys/{key_id}"): "admin",
    ("GET", "/v1/alerts"): "viewer",
    ("PUT", "/v1/alerts/{name}"): "operator",
    ("DELETE", "/v1/alerts/{name}"): "operator",
    ("GET", "/v1/audit"): "admin",
    ("GET", "/v1/audit/verify"): "admin",
    ("GET", "/v1/audit/anchor"): "admin",
    ("GET", "/v1/fleet"): "viewer",
    ("GET", "/v1/fleet/nodes"): "viewer",
    ("GET", "/v1/fleet/deployments"): "viewer",
    ("GET", "/v1/fleet/rollouts"): "viewer",
    ("GET", "/v1/fleet/devices"): "viewer",
    ("POST", "/v1/fleet/rollouts/{name}/{action}"): "operator",
    ("GET", "/v1/stream"): "viewer",
    ("GET", "/v1/history"): "viewer",
    ("GET", "/v1/dead-letters"): "viewer",
    ("POST", "/v1/routes/{name}/dead-letters/replay"): "operator",
    ("GET", "/v1/results"): "viewer",
}
PUBLIC = {("GET", "/healthz"), ("GET", "/readyz")}
WEAKER = {"operator": "viewer", "admin": "operator"}


@pytest.fixture()
def api(tmp_path):
    n = ApiNode(tmp_path).start()
    yield n
    n.stop()


def denied_total(api) -> float:
    text = api.admin.get("/metrics").text
    return float(next(ln.split()[1] for ln in text.splitlines() if ln.startswith("iotwasm_api_denied_total ")))


def test_every_route_is_refused_without_a_token_or_with_a_weaker_role(api):
    spec = api.admin.get("/openapi.json").json()
    listed = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    assert listed == set(ROUTES) | PUBLIC, "a route is missing from ROUTES (or gone)"
    tokens = {r: api.token(r, name=f"{r}-token") for r in ("viewer", "operator")}
    for (method, path), role in ROUTES.items():
        url = path.format(ref="sha256:" + "0" * 64, name="x", token_id="ffff", key_id="k", action="pause",
                          namespace="default", device="x")
        kw = {"json": {}} if method in ("POST", "PUT") else {}
        for headers, why in (({}, "no token"), ({"Authorization": "Bearer iot_wrong"}, "unknown token"),
                             ({"Authorization": "Basic Zm9vOmJhcg=="}, "not a bearer token")):
            r = httpx.request(method, api.url + url, headers=headers, timeout=10, **kw)
            assert r.status_code in (401, 403), (method, path, why, r.status_code)
            assert r.headers["content-type"] == "application/problem+json"
        if role in WEAKER:
            weak = WEAKER[role]
            r = httpx.request(method, api.url + url, headers={"Authorization": f"Bearer {tokens[weak]}"},
                              timeout=10, **kw)
            assert r.status_code == 403, (method, path, weak, r.status_code, r.text)
            assert f"needs role {role}" in r.json()["detail"]
    # each refusal is counted; those of a valid token are audited one by one, those without one
    # at a bounded rate (see the flood test below)
    weak = sum(1 for role in ROUTES.values() if role in WEAKER)
    assert denied_total(api) == 3 * len(ROUTES) + weak
    denied = api.admin.get("/v1/audit", params={"action": "auth.denied", "limit": 1000}).json()
    assert sum(1 for row in denied if row["actor"] != "anonymous") == weak
    assert sum(1 for row in denied if row["actor"] == "anonymous") > 0
    # a revoked token stops working at once
    tid = api.admin.post("/v1/tokens", json={"name": "short", "role": "viewer"}).json()
    assert api.client(tid["token"]).get("/v1/node").status_code == 200
    assert api.admin.delete(f"/v1/tokens/{tid['id']}").status_code == 200
    assert api.client(tid["token"]).get("/v1/node").status_code == 401


def test_tenants_cannot_see_change_or_emit_into_each_other(api):
    a = api.admin
    for name in ("acme", "globex"):
        r = a.put(f"/v1/tenants/{name}", json={"topic_prefix": f"{name}/", "max_deployments": 2,
                                                "max_instances": 3, "max_memory": "64Mi"})
        assert r.status_code == 200, r.text
    acme = api.client(api.token("operator", "acme"))
    globex = api.client(api.token("operator", "globex"))
    globex_admin = api.client(api.token("admin", "globex"))

    assert push(acme, name="acme/echo", version="1").status_code == 201
    r = apply(acme, deployment("sensor", "acme/echo:1", namespace="acme", publish="acme/#", subscribe="acme/#")
              + "---\n" + http_route("r", "sensor", "/acme/in", "acme/in/{device}", "acme_out", namespace="acme",
                                     dead_letter="acme/dead/{route}"))
    assert r.status_code == 200 and r.json()["problems"] == [], r.text
    api.ingest("/acme/in", "d1", [b"1", b"2"])
    wait_for(lambda: api.node.store.count("acme_out") == 2, what="acme's route works")

    # cannot see
    assert globex.get("/v1/deployments").json() == []
    assert globex.get("/v1/routes").json() == []
    assert globex.get("/v1/modules").json() == []
    for path in ("/v1/deployments/sensor", "/v1/deployments/sensor/history", "/v1/deployments/sensor/logs",
                 "/v1/routes/r", "/v1/tenants/acme"):
        assert globex.get(path).status_code == 404, path
    assert all(e["object"] != "sensor" for e in globex.get("/v1/events").json())
    assert [d["name"] for d in acme.get("/v1/deployments").json()] == ["sensor"]
    # cannot change
    for method, path, body in (("POST", "/v1/deployments/sensor/scale", {"replicas": 2}),
                               ("POST", "/v1/deployments/sensor/suspend", None),
                               ("POST", "/v1/deployments/sensor/invoke", {"messages": [{"payload": "x"}]}),
                               ("POST", "/v1/deployments/sensor/rollback", {}),
                               ("DELETE", "/v1/deployments/sensor", None), ("DELETE", "/v1/routes/r", None)):
        assert globex.request(method, path, json=body).status_code == 404, path
    r = apply(globex, deployment("sensor", "acme/echo:1", namespace="globex", publish="globex/#"))
    assert r.status_code == 403 and "taken by namespace 'acme'" in r.json()["detail"]
    r = apply(globex, deployment("g", "acme/echo:1", namespace="acme"))
    assert r.status_code == 403 and "not yours" in r.json()["detail"]
    r = apply(globex, deployment("g", "acme/echo:1", namespace="globex", publish="globex/#", subscribe="globex/#"))
    assert r.status_code == 403 and "belongs to another tenant" in r.json()["detail"]
    assert push(globex, name="globex/echo", version="1").status_code == 201
    # cannot emit into (or listen to) another tenant's topics
    r = apply(globex, deployment("g", "globex/echo:1", namespace="globex", publish="acme/#", subscribe="globex/#"))
    assert r.status_code == 403 and "outside the topic prefix 'globex/'" in r.json()["detail"]
    r = apply(globex, deployment("g", "globex/echo:1", namespace="globex", publish="globex/#", subscribe="#"))
    assert r.status_code == 403 and "topics.subscribe" in r.json()["detail"]
    r = apply(globex, deployment("g", "globex/echo:1", namespace="globex", publish="globex/#", subscribe="globex/#")
              + "---\n" + http_route("gr", "g", "/g", "acme/in/{device}", "g", namespace="globex",
                                     dead_letter="globex/dead"))
    assert r.status_code == 403 and "spec.source" in r.json()["detail"]
    r = apply(globex, http_route("gr", "sensor", "/globex/g", "globex/in/{device}", "g", namespace="globex",
                                 dead_letter="globex/dead"))
    assert r.status_code == 403 and "deployment of another namespace" in r.json()["detail"]
    r = apply(globex, deployment("g", "globex/echo:1", namespace="globex", publish="globex/#", subscribe="globex/#")
              + "---\n" + http_route("gr", "g", "/acme/in", "globex/in/{device}", "g", namespace="globex",
                                     dead_letter="globex/dead"))
    assert r.status_code == 403 and "must start with '/globex/'" in r.json()["detail"]
    # a tenant admin manages its own tenant's tokens only, and not tenants
    assert globex_admin.post("/v1/tokens", json={"name": "x", "role": "admin", "tenant": "acme"}).status_code == 403
    assert globex_admin.post("/v1/tokens", json={"name": "x", "role": "admin"}).status_code == 403
    assert globex_admin.put("/v1/tenants/globex", json={"max_deployments": 100}).status_code == 403
    assert all(row["tenant"] == "globex" for row in globex_admin.get("/v1/audit").json())
    # quotas
    r = acme.post("/v1/deployments/sensor/scale", json={"replicas": 4})
    assert r.status_code == 403 and "4 instances exceed its quota of 3" in r.json()["detail"]
    r = apply(acme, deployment("big", "acme/echo:1", namespace="acme", publish="acme/#", subscribe="acme/#",
                               memory="60Mi"))
    assert r.status_code == 403 and "memory" in r.json()["detail"]
    assert apply(acme, deployment("two", "acme/echo:1", namespace="acme", publish="acme/#",
                                  subscribe="acme/#")).status_code == 200
    r = apply(acme, deployment("three", "acme/echo:1", namespace="acme", publish="acme/#", subscribe="acme/#"))
    assert r.status_code == 403 and "3 deployments exceed its quota of 2" in r.json()["detail"]
    assert set(api.node.deployments) == {"sensor", "two"}
    # refusals are audited with the tenant
    rows = a.get("/v1/audit", params={"tenant": "globex"}).json()
    assert any(r["outcome"] == "denied" and r["action"] == "apply" for r in rows)


def _sig_param(sig) -> str:
    return base64.urlsafe_b64encode(sig.to_json().encode()).decode().rstrip("=")


def test_unsigned_untrusted_or_tampered_modules_are_refused_when_signatures_are_required(api):
    a = api.admin
    private_pem, public_pem = generate_key()
    other_private, _ = generate_key()
    key = load_private(private_pem)
    assert a.put("/v1/tenants/secure", json={"require_signatures": True}).status_code == 200
    kid = a.post("/v1/tenants/secure/keys", json={"public_pem": public_pem.decode()}).json()["key_id"]
    op = api.client(api.token("operator", "secure"))
    digest = digest_of(ECHO_WASM)

    r = push(op, name="secure/echo", version="1")
    assert r.status_code == 422 and "is not signed and signatures are required" in r.json()["detail"]
    r = push(op, signature=_sig_param(sign_digest(load_private(other_private), digest)))
    assert r.status_code == 422 and "not trusted here" in r.json()["detail"]
    tampered = bytes(wasmtime.wat2wasm(ECHO_WAT.replace("(i32.const 1024)", "(i32.const 2048)")))
    r = push(op, tampered, signature=_sig_param(sign_digest(key, digest)))
    assert r.status_code == 422 and "module changed after signing" in r.json()["detail"]
    forged = sign_digest(key, digest)
    forged = type(forged)(digest, forged.key_id, bytes([forged.signature[0] ^ 1]) + forged.signature[1:])
    r = push(op, signature=_sig_param(forged))
    assert r.status_code == 422 and "does not verify" in r.json()["detail"]
    assert api.node.registry.list() == []  # nothing refused was stored

    r = push(op, name="secure/echo", version="1", signature=_sig_param(sign_digest(key, digest)))
    assert r.status_code == 201 and r.json()["signed_by"] == [kid]
    r = apply(op, deployment("s", "secure/echo:1", namespace="secure"))
    assert r.status_code == 200 and r.json()["problems"] == []
    assert api.node.deployments["s"].handle.current.state == "running"

    # at load: once the key is no longer trusted, a new revision of the same module is refused
    assert a.delete(f"/v1/tenants/secure/keys/{kid}").status_code == 200
    r = apply(op, deployment("s", "secure/echo:1", namespace="secure", memory="32Mi"))
    assert r.status_code == 200
    assert any("refused at load" in p and "trusts no key" in p for p in r.json()["problems"]), r.text
    assert api.node.deployments["s"].handle.revision == 1  # the signed revision keeps running
    # and a blob changed on disk is refused at load even with a trusted signature
    a.post("/v1/tenants/secure/keys", json={"public_pem": public_pem.decode()})
    blob = api.node.registry.blob_path(digest)
    blob.chmod(0o644)
    blob.write_bytes(tampered)
    r = apply(op, deployment("s", "secure/echo:1", namespace="secure", memory="48Mi"))
    assert any("modified on disk" in p for p in r.json()["problems"]), r.text
    rows = a.get("/v1/audit", params={"action": "module.refused-at-load"}).json()
    assert len(rows) == 2 and all(row["tenant"] == "secure" for row in rows)


def test_editing_one_audit_row_breaks_verification(api):
    a = api.admin
    for i in range(5):
        a.put(f"/v1/tenants/t{i}", json={"max_deployments": i})
    v = a.get("/v1/audit/verify").json()
    assert v["ok"] and v["rows"] >= 5
    rows = a.get("/v1/audit", params={"action": "tenant.put"}).json()
    victim = rows[2]["id"]
    with sqlite3.connect(api.data / "audit.db") as db:
        db.execute("UPDATE audit SET detail = 'nothing happened' WHERE id = ?", (victim,))
    v = a.get("/v1/audit/verify").json()
    assert not v["ok"] and v["problem"] == f"row {victim}: contents do not match its hash (edited)"
    with sqlite3.connect(api.data / "audit.db") as db:
        db.execute("UPDATE audit SET detail = ? WHERE id = ?", (rows[2]["detail"], victim))
    assert a.get("/v1/audit/verify").json()["ok"]
    with sqlite3.connect(api.data / "audit.db") as db:
        db.execute("DELETE FROM audit WHERE id = ?", (victim,))
    v = a.get("/v1/audit/verify").json()
    assert not v["ok"] and f"row {victim} is missing" in v["problem"]


def test_acl_denials_are_audited_per_route_with_their_count(api):
    a = api.admin
    assert push(a, name="echo", version="1").status_code == 201
    # echo answers on the input topic, which this deployment may not publish to
    r = apply(a, deployment("mute", "echo:1", publish="elsewhere/#")
              + "---\n" + http_route("r", "mute", "/in", "in/{device}", "out"))
    assert r.status_code == 200 and r.json()["problems"] == [], r.text
    api.ingest("/in", "d1", [b"1", b"2", b"3"])
    def counted():
        rows = a.get("/v1/audit", params={"action": "acl.denied"}).json()
        return rows if sum(int(r["detail"].split()[0]) for r in rows) == 3 else None
    rows = wait_for(counted, what="3 denials audited")  # one row per sweep that saw new ones
    assert all(r["target"] == "route/r" and "refused by topic ACLs" in r["detail"] for r in rows)
    assert rows[0]["detail"].endswith("(3 in all)")
    assert api.node.store.count("out") == 0


def test_a_token_with_an_expiry_is_refused_as_expired_once_it_passes(api):
    a = api.admin
    r = a.post("/v1/tokens", json={"name": "brief", "role": "viewer", "expires_in": "1s"})
    assert r.status_code == 201, r.text
    tok = r.json()
    assert tok["expires"] is not None
    brief = api.client(tok["token"])
    assert brief.get("/v1/node").status_code == 200
    r = wait_for(lambda: (x := brief.get("/v1/node")).status_code == 401 and x, what="the token to expire")
    assert r.json()["detail"] == f"token {tok['id']} expired at {utc(tok['expires'])}"
    assert r.json()["type"].endswith("/token-expired")
    # an unknown token is still told apart from an expired one
    assert "unknown or revoked" in api.client("iot_wrong").get("/v1/node").json()["detail"]
    listed = {t["id"]: t for t in a.get("/v1/tokens").json()}
    assert listed[tok["id"]]["expires"] == tok["expires"] and listed[tok["id"]]["expired"] is True
    admin = next(t for t in listed.values() if t["name"] == "initial-admin")
    assert admin["expires"] is None and admin["expired"] is False  # the first admin token never expires
    rows = a.get("/v1/audit", params={"action": "auth.denied"}).json()
    assert any(row["actor"] == f"brief ({tok['id']})" and row["detail"] == r.json()["detail"] for row in rows)


@pytest.mark.parametrize("bad", ["3w", "3600", "0s", "-1h", "99999d"])
def test_a_malformed_expiry_is_refused_naming_the_field(api, bad):
    r = api.admin.post("/v1/tokens", json={"name": "x", "role": "viewer", "expires_in": bad})
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith("body.expires_in: "), r.json()["detail"]
    assert bad in r.json()["detail"]


def test_tokens_of_a_database_from_before_expiry_keep_working(tmp_path):
    old = tmp_path / "api.db"
    with sqlite3.connect(old) as db:
        db.execute("CREATE TABLE tokens (id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, name TEXT NOT NULL, "
                   "role TEXT NOT NULL, tenant TEXT, created REAL NOT NULL, revoked INTEGER NOT NULL DEFAULT 0)")
        db.execute("INSERT INTO tokens VALUES ('abcd1234', ?, 'old', 'operator', NULL, 1.0, 0)",
                   (hash_token("iot_old"),))
    store = SecurityStore(old)
    try:
        assert store.authenticate("iot_old").token_id == "abcd1234"
        assert store.tokens()[0]["expires"] is None and store.tokens()[0]["expired"] is False
        tid, secret, expires = store.create_token("new", "viewer", expires_in_s=3600)
        assert expires is not None and store.authenticate(secret).token_id == tid
    finally:
        store.close()


def test_a_flood_of_requests_without_a_valid_token_writes_a_bounded_audit_with_counts(tmp_path):
    api = ApiNode(tmp_path).start()
    api.server.ctx.denials.window_s = 3600  # one window for the whole burst, however slow the machine
    try:
        with httpx.Client(base_url=api.url, timeout=30) as anon:
            for _ in range(500):
                assert anon.get("/v1/node").status_code == 401
            for i in range(200):  # another path each time: still one route, one group
                assert anon.get(f"/v1/deployments/d{i}", headers={"Authorization": "Bearer iot_guess"}).status_code == 401
        assert denied_total(api) == 700  # every denial counted, written or not
        rows = api.admin.get("/v1/audit", params={"actor": "anonymous", "limit": 1000}).json()
        assert sum(1 for r in rows if r["detail"] == "no bearer token") == 10
        assert sum(1 for r in rows if r["detail"] == "unknown or revoked token") == 10
    finally:
        api.stop()  # ends the window: its summaries are written, nothing is lost
    log = AuditLog(api.data / "audit.db")
    try:
        rows = log.query(actor="anonymous", limit=1000)
        summaries = {r["target"]: r["detail"] for r in rows if "suppressed" in r["detail"]}
        assert set(summaries) == {"GET /v1/node", "GET /v1/deployments/{name}"}
        assert summaries["GET /v1/node"].startswith("no bearer token … and 490 more denials suppressed in ")
        assert summaries["GET /v1/deployments/{name}"].startswith("unknown or revoked token … and 190 more ")
        assert len(rows) == 10 + 10 + 2
        assert log.verify()["ok"]
    finally:
        log.close()


def test_denial_summaries_are_written_when_the_window_ends(tmp_path):
    now = [1000.0]
    log = AuditLog(tmp_path / "audit.db")
    throttle = DenialThrottle(log, per_group=3, total=5, window_s=60, clock=lambda: now[0])
    try:
        for i in range(20):
            throttle.denied("anonymous", f"GET /v1/deployments/d{i}", "no bearer token", "GET /v1/deployments/{name}")
        for _ in range(4):
            throttle.denied("anonymous", "GET /v1/node", "no bearer token", "GET /v1/node")
        # 3 of the first group; 2 of the second before the window's total of 5 is reached
        assert [r["target"] for r in log.query(limit=100)].count("GET /v1/node") == 2
        assert len(log.query(limit=100)) == 5
        assert not throttle.sweep_due()
        throttle.sweep()
        assert len(log.query(limit=100)) == 5  # the window has not ended yet
        now[0] += 60
        assert throttle.sweep_due()
        throttle.sweep()
        assert not throttle.sweep_due()
        summaries = {r["target"]: r["detail"] for r in log.query(limit=100) if "suppressed" in r["detail"]}
        assert summaries["GET /v1/deployments/{name}"].startswith("no bearer token … and 17 more denials "
                                                                   "suppressed in 60 s from ")
        assert summaries["GET /v1/node"].startswith("no bearer token … and 2 more denials")
        throttle.sweep()
        assert len(log.query(limit=100)) == 7  # once
        throttle.denied("anonymous", "GET /v1/node", "no bearer token", "GET /v1/node")  # a new window
        assert len(log.query(limit=100)) == 8
        assert log.verify() == {**log.verify(), "ok": True, "rows": 8}
    finally:
        log.close()


def test_an_internal_error_gives_the_client_an_id_and_the_log_the_details(api, caplog):
    """What broke may name paths, tenants or data: the client gets an incident id, the node's
    log the traceback under that id."""
    def broken() -> dict:
        raise RuntimeError("cannot open /var/lib/iotwasm/acme/secret-plan.db")
    api.server.app.add_api_route("/v1/broken", broken, methods=["GET"])
    with caplog.at_level("ERROR", logger="iotwasm.api"):
        r = httpx.get(api.url + "/v1/broken", timeout=10)
    assert r.status_code == 500 and r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert "secret" not in r.text and "RuntimeError" not in r.text
    assert body["detail"] == f"internal error {body['incident']}: the node's log has the details under this id"
    logged = [rec for rec in caplog.records if body["incident"] in rec.getMessage()]
    assert logged and "secret-plan.db" in str(logged[0].exc_info[1])


def test_the_api_s_pages_load_nothing_from_elsewhere(api):
    """No /docs or /redoc (they load their scripts from a CDN); the document is served as is."""
    for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        assert httpx.get(api.url + path).status_code == 404, path
    assert httpx.get(api.url + "/openapi.json").json()["info"]["title"] == "iotwasm node API"


@pytest.mark.parametrize("prefix, says", [("#", "wildcard"), ("acme/#", "wildcard"), ("+/x/", "wildcard"),
                                          ("acme", "must end with '/'"), ("$SYS/", "may not start with '$'"),
                                          ("acme\n/", "control characters")])
def test_a_topic_prefix_that_would_not_confine_is_refused(api, prefix, says):
    r = api.admin.put("/v1/tenants/acme", json={"topic_prefix": prefix})
    assert r.status_code == 422 and r.json()["detail"].startswith("body.topic_prefix: "), r.text
    assert says in r.json()["detail"] and "\n" not in r.json()["detail"]
    assert api.admin.get("/v1/tenants/acme").status_code == 404
    assert api.admin.put("/v1/tenants/acme", json={"topic_prefix": "acme/"}).status_code == 200
