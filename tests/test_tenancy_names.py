"""Tenants own their names, through the real API: module names and tags belong to a namespace,
deployments are bound to a digest when applied, state is keyed by identity and goes with its
object (archived, then purged after the retention; a data directory from before identities
keeps its own), and a module of the node's own manifest files is deployable by a tenant only
once granted."""

from __future__ import annotations

import json
import sqlite3

import pytest
import wasmtime

from apinode import ECHO_WASM, ApiNode, deployment, http_route, wait_for
from conftest import module_path
from iotwasm.engine.module import digest_of
from iotwasm.node.manifests import parse_documents
from iotwasm.registry import ModuleStore
from tenancy import COUNTER_WASM, apply, push, running, tenants

# counts its inputs in kv under "count" and emits the new count (tests/modules/host_calls.wat)
KV_WASM = bytes(wasmtime.wat2wasm(module_path("host_calls.wat").read_text()))
KV_HOST = "log, clock, random, kv, config, metrics"


@pytest.fixture()
def api(tmp_path):
    n = ApiNode(tmp_path).start()
    yield n
    n.stop()


def confined(name: str, module: str, ns: str, host: str = "log") -> str:
    return deployment(name, module, namespace=ns, publish=f"{ns}/#", subscribe=f"{ns}/#", host=host)


def confined_route(name: str, step: str, ns: str, table: str) -> str:
    return http_route(name, step, f"/{ns}/{name}", f"{ns}/{name}/{{device}}", table, namespace=ns,
                      dead_letter=f"{ns}/dead/{{route}}")


# --- module names and tags -------------------------------------------------------------------

def test_a_tenant_cannot_repoint_a_tag_of_the_node_namespace(api):
    a = api.admin
    acme = tenants(api, "acme")["acme"]
    r = push(a, ECHO_WASM, name="shared", version="1.0.0")
    assert r.status_code == 201, r.text
    admin_digest = r.json()["digest"]
    r = apply(a, deployment("sd", "shared:1.0.0") + "---\n" + http_route("sr", "sd", "/sd", "sd/{device}", "sd_out"))
    assert r.status_code == 200 and r.json()["problems"] == [], r.text

    for params in ({"name": "shared", "version": "1.0.0", "force": "true"}, {"name": "shared", "version": "99.0.0"}):
        r = push(acme, COUNTER_WASM, **params)
        assert r.status_code == 403, r.text
        assert r.json()["detail"] == ("module name 'shared' is in the node's namespace; tenant acme publishes "
                                      "under 'acme/' (e.g. acme/shared)")
    assert api.node.registry.resolve("shared:1.0.0") == admin_digest
    assert api.node.registry.versions("shared") == ["1.0.0"]
    rows = a.get("/v1/audit", params={"action": "module.push", "tenant": "acme"}).json()
    assert len(rows) == 2 and all(row["outcome"] == "denied" for row in rows)

    # the admin's next scale keeps running the admin's module
    assert a.post("/v1/deployments/sd/scale", json={"replicas": 2}).status_code == 200
    assert a.get("/v1/deployments/sd").json()["module_digest"] == admin_digest
    api.ingest("/sd", "d1", [b'"from-admin"'])
    wait_for(lambda: api.node.store.count("sd_out") == 1, what="the admin's route delivers")
    assert api.node.store.query("sd_out")[0]["payload"] == "from-admin"  # echoed, not counted

    # under its own namespace the tenant publishes freely
    r = push(acme, COUNTER_WASM, name="acme/shared", version="1.0.0")
    assert r.status_code == 201 and r.json()["tags"] == ["acme/shared:1.0.0"], r.text


def test_a_tenant_cannot_publish_under_another_tenants_name(api):
    a = api.admin
    t = tenants(api, "acme", "globex")
    acme, globex = t["acme"], t["globex"]
    r = push(globex, ECHO_WASM, name="ipass", version="1.0.0")
    assert r.status_code == 403 and "e.g. globex/ipass" in r.json()["detail"], r.text
    r = push(globex, ECHO_WASM, name="globex/ipass", version="1.0.0")
    assert r.status_code == 201, r.text
    globex_digest = r.json()["digest"]
    r = apply(globex, confined("gi", "globex/ipass", "globex"))  # follows latest when applied
    assert r.status_code == 200 and r.json()["problems"] == [], r.text

    for params in ({"name": "globex/ipass", "version": "99.0.0"},
                   {"name": "globex/ipass", "version": "1.0.0", "force": "true"}):
        r = push(acme, COUNTER_WASM, **params)
        assert r.status_code == 403, r.text
        assert r.json()["detail"] == ("module name 'globex/ipass' belongs to namespace 'globex'; tenant acme "
                                      "publishes under 'acme/' (e.g. acme/ipass)")
    assert api.node.registry.versions("globex/ipass") == ["1.0.0"]
    assert running(api, "gi")["module_digest"] == globex_digest

    # the owner adds versions; a node admin may publish into any namespace
    assert push(globex, COUNTER_WASM, name="globex/ipass", version="1.1.0").status_code == 201
    assert push(a, COUNTER_WASM, name="globex/ipass", version="2.0.0").status_code == 201
    assert api.node.registry.versions("globex/ipass") == ["1.0.0", "1.1.0", "2.0.0"]
    # a tag that moves changes nothing that runs
    assert a.get("/v1/deployments/gi").json()["module_digest"] == globex_digest


def test_a_moving_tag_never_changes_a_running_deployment_across_a_restart(tmp_path):
    api = ApiNode(tmp_path).start()
    try:
        a = api.admin
        d1 = push(a, ECHO_WASM, name="m", version="1.0.0").json()["digest"]
        manifests = deployment("md", "m") + "---\n" + http_route("mr", "md", "/m", "m/{device}", "m_out")
        r = apply(a, manifests)  # `m` is the highest version of m: 1.0.0 when applied
        assert r.status_code == 200 and r.json()["problems"] == [], r.text
        assert running(api, "md")["module_digest"] == d1
        d2 = push(a, COUNTER_WASM, name="m", version="2.0.0").json()["digest"]
        assert api.node.registry.resolve("m") == d2
        assert a.post("/v1/deployments/md/scale", json={"replicas": 2}).status_code == 200
        assert a.get("/v1/deployments/md").json()["module_digest"] == d1
    finally:
        api.stop()

    api = ApiNode(tmp_path).start()
    try:
        a = api.admin
        view = running(api, "md")
        assert view["module_digest"] == d1 and view["replicas"] == 2
        assert {h["module_digest"] for h in a.get("/v1/deployments/md/history").json()} == {d1}
        api.ingest("/m", "d1", [b'"still-echo"'])
        wait_for(lambda: api.node.store.count("m_out") == 1, what="delivered")
        assert api.node.store.query("m_out")[0]["payload"] == "still-echo"
        # applying again is how a deployment follows the tag
        r = apply(a, manifests)
        assert r.status_code == 200 and r.json()["problems"] == [], r.text
        assert a.get("/v1/deployments/md").json()["module_digest"] == d2
        # and rolling back returns to the digest the earlier revision ran, not to what its tag says now
        r = a.post("/v1/deployments/md/rollback", json={})
        assert r.status_code == 200, r.text
        assert a.get("/v1/deployments/md").json()["module_digest"] == d1
    finally:
        api.stop()


def test_a_manifest_file_naming_a_tag_keeps_its_digest_until_the_file_changes(tmp_path):
    with ModuleStore(tmp_path / "data" / "modules") as store:
        d1 = store.add(ECHO_WASM, name="m", version="1.0.0").digest
    mdir = tmp_path / "manifests"
    mdir.mkdir()
    (mdir / "m.yaml").write_text(deployment("fd", "m"))
    api = ApiNode(tmp_path, manifests=mdir).start()
    try:
        assert running(api, "fd")["module_digest"] == d1
        d2 = push(api.admin, COUNTER_WASM, name="m", version="2.0.0").json()["digest"]
    finally:
        api.stop()
    api = ApiNode(tmp_path, manifests=mdir).start()
    try:
        assert running(api, "fd")["module_digest"] == d1
        (mdir / "m.yaml").write_text(deployment("fd", "m", memory="32Mi"))  # an edit resolves again
        wait_for(lambda: api.admin.get("/v1/deployments/fd").json().get("module_digest") == d2,
                 what="the edited manifest bound to m:2.0.0")
    finally:
        api.stop()


# --- state goes with its object --------------------------------------------------------------

def test_state_of_a_deleted_object_is_not_handed_to_whoever_recreates_its_name(api):
    a = api.admin
    t = tenants(api, "acme", "globex")
    for ns, client in t.items():
        assert push(client, KV_WASM, name=f"{ns}/counter", version="1").status_code == 201
        assert push(client, ECHO_WASM, name=f"{ns}/echo", version="1").status_code == 201

    def create(ns: str) -> None:
        text = "---\n".join([confined("gkv", f"{ns}/counter:1", ns, host=KV_HOST),
                             confined_route("gkv-in", "gkv", ns, f"{ns}_kv"),
                             confined("gdl-step", f"{ns}/echo:1", ns),
                             confined_route("gdl", "gdl-step", ns, f"{ns}_dl")])
        r = apply(t[ns], text)
        assert r.status_code == 200 and r.json()["problems"] == [], r.text

    globex = t["globex"]
    create("globex")
    api.ingest("/globex/gkv-in", "d1", [b"a", b"b", b"c"])
    wait_for(lambda: api.node.store.count("globex_kv") == 3, what="globex counted 3 in kv")
    api.ingest("/globex/gdl", "d1", [b"!globex-secret"])  # echo traps on '!': a dead letter
    wait_for(lambda: globex.get("/v1/routes/gdl").json()["dead_letters_recent"], what="globex's dead letter")
    assert globex.get("/v1/routes/gdl").json()["dead_letters_recent"][0]["payload"] == "!globex-secret"
    for path in ("/v1/routes/gkv-in", "/v1/routes/gdl", "/v1/deployments/gkv", "/v1/deployments/gdl-step"):
        assert globex.delete(path).status_code == 200, path

    acme = t["acme"]
    create("acme")
    api.ingest("/acme/gkv-in", "d1", [b"x"])
    wait_for(lambda: api.node.store.count("acme_kv") == 1, what="acme's first count")
    assert api.node.store.query("acme_kv")[0]["payload"] == 1  # a fresh kv, not globex's 3 + 1
    assert acme.get("/v1/routes/gdl").json()["dead_letters_recent"] == []
    hist = acme.get("/v1/deployments/gkv/history").json()
    assert [h["revision"] for h in hist] == [1]
    for client in (acme, a):  # the node admin's view of the name is the live object's too
        evs = client.get("/v1/events", params={"object": "gkv"}).json()
        assert [e["kind"] for e in evs].count("created") == 1, evs
        assert all(e["namespace"] == "acme" for e in evs), evs
    assert all(e["namespace"] == "acme" for e in acme.get("/v1/events", params={"limit": 1000}).json())
    assert [e["kind"] for e in acme.get("/v1/deployments/gkv").json()["events"]].count("created") == 1
    # what globex's objects left is archived under their identities, visible to no one else
    assert sum(1 for e in globex.get("/v1/events", params={"limit": 1000}).json()
               if e["object"] == "gkv" and e["kind"] == "created") == 1
    assert "globex-secret" not in json.dumps(acme.get("/v1/routes/gdl").json())


OLD_NODE_SCHEMA = """
CREATE TABLE revisions (
    name TEXT NOT NULL, revision INTEGER NOT NULL, module_digest TEXT NOT NULL,
    manifest TEXT NOT NULL, created REAL NOT NULL, status TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (name, revision));
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, kind TEXT NOT NULL,
    object TEXT NOT NULL, message TEXT NOT NULL);
CREATE TABLE dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, route TEXT NOT NULL, step TEXT NOT NULL,
    kind TEXT NOT NULL, error TEXT NOT NULL, topic TEXT NOT NULL, payload BLOB NOT NULL);
CREATE TABLE kv (
    container TEXT NOT NULL, key BLOB NOT NULL, value BLOB NOT NULL, PRIMARY KEY (container, key));
CREATE TABLE applied_manifests (
    kind TEXT NOT NULL, name TEXT NOT NULL, namespace TEXT NOT NULL, manifest TEXT NOT NULL,
    applied REAL NOT NULL, actor TEXT NOT NULL DEFAULT '', PRIMARY KEY (kind, name));
CREATE TABLE applied_generation (id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER NOT NULL);
INSERT INTO applied_generation VALUES (1, 3);
"""


def test_a_node_on_a_data_directory_from_before_identities_keeps_its_state(tmp_path):
    data = tmp_path / "data"
    with ModuleStore(data / "modules") as store:
        digest = store.add(KV_WASM, name="counter", version="1").digest
    dep = parse_documents(deployment("kvd", "counter:1", host=KV_HOST))[0]
    route = parse_documents(http_route("kvr", "kvd", "/kv", "kv/{device}", "kv_out"))[0]
    with sqlite3.connect(data / "node.db") as db:
        db.executescript(OLD_NODE_SCHEMA)
        for m in (dep, route):
            db.execute("INSERT INTO applied_manifests VALUES (?,?,?,?,?,?)",
                       (m.kind, m.name, "default", json.dumps(m.model_dump(mode="json", by_alias=True)), 1.0, "old"))
        db.execute("INSERT INTO revisions VALUES ('kvd', 1, ?, ?, 1.0, 'serving', '')",
                   (digest, json.dumps(dep.model_dump(mode="json", by_alias=True))))
        db.execute("INSERT INTO kv VALUES ('kvd', ?, ?)", (b"count", b"41"))
        db.execute("INSERT INTO kv VALUES ('ghost', ?, ?)", (b"count", b"7"))  # deleted before the upgrade
        db.execute("INSERT INTO dead_letters(ts, route, step, kind, error, topic, payload) "
                   "VALUES (1.0, 'kvr', 'kvd', 'trap', 'boom', 'kv/d1', ?)", (b"old-letter",))
        db.execute("INSERT INTO dead_letters(ts, route, step, kind, error, topic, payload) "
                   "VALUES (1.0, 'ghost-route', 'ghost', 'trap', 'boom', 'g/d1', ?)", (b"ghost-letter",))
        db.execute("INSERT INTO events(ts, kind, object, message) VALUES (1.0, 'created', 'kvd', 'revision 1')")
        db.execute("INSERT INTO events(ts, kind, object, message) VALUES (1.0, 'created', 'ghost', 'old ghost')")

    api = ApiNode(tmp_path).start()
    try:
        a = api.admin
        running(api, "kvd")
        api.ingest("/kv", "d1", [b"x"])
        wait_for(lambda: api.node.store.count("kv_out") == 1, what="counted")
        assert api.node.store.query("kv_out")[0]["payload"] == 42  # its kv came along
        assert [h["revision"] for h in a.get("/v1/deployments/kvd/history").json()][0] == 1
        assert [d["payload"] for d in a.get("/v1/routes/kvr").json()["dead_letters_recent"]] == ["old-letter"]
        assert "revision 1" in [e["message"] for e in a.get("/v1/events", params={"object": "kvd"}).json()]

        # what a name left behind before the upgrade is not handed to the next object of that name
        r = apply(a, deployment("ghost", "counter:1", host=KV_HOST) + "---\n"
                  + http_route("ghost-route", "ghost", "/ghost", "g/{device}", "ghost_out"))
        assert r.status_code == 200 and r.json()["problems"] == [], r.text
        api.ingest("/ghost", "d1", [b"x"])
        wait_for(lambda: api.node.store.count("ghost_out") == 1, what="ghost counted")
        assert api.node.store.query("ghost_out")[0]["payload"] == 1
        assert a.get("/v1/routes/ghost-route").json()["dead_letters_recent"] == []
        assert "old ghost" not in [e["message"] for e in a.get("/v1/events", params={"object": "ghost"}).json()]
    finally:
        api.stop()


def test_archived_state_is_purged_after_the_retention(tmp_path):
    from iotwasm.node.state import NodeState, SqliteKeyValue

    now = [1000.0]
    state = NodeState(tmp_path / "node.db", clock=lambda: now[0])
    try:
        uid = state.identify("Deployment", "acme", "d")
        kv = SqliteKeyValue(state, uid, 1024)
        assert kv.set(b"k", b"v")
        state.event("created", "d", "hello", uid=uid, namespace="acme")
        state.retire(uid)
        again = state.identify("Deployment", "acme", "d")
        assert again != uid and SqliteKeyValue(state, again, 1024).get(b"k") is None
        assert kv.get(b"k") == b"v"  # archived, not yet deleted
        now[0] += 99
        assert state.purge_retired(100) == 0
        now[0] += 2
        assert state.purge_retired(100) == 1
        assert kv.get(b"k") is None
        assert all(e["message"] != "hello" for e in state.events(limit=100))
    finally:
        state.close()


# --- modules of the node's own manifest files ------------------------------------------------

def test_a_module_from_the_nodes_manifest_files_is_deployable_by_a_tenant_only_once_granted(tmp_path):
    mdir = tmp_path / "manifests"
    mdir.mkdir()
    (mdir / "echo.wasm").write_bytes(ECHO_WASM)
    (mdir / "node.yaml").write_text(deployment("filedep", "echo.wasm"))
    api = ApiNode(tmp_path, manifests=mdir).start()
    try:
        a = api.admin
        digest = digest_of(ECHO_WASM)
        running(api, "filedep")
        t = tenants(api, "acme", "globex")
        r = apply(t["acme"], confined("ad", digest, "acme"))
        assert r.status_code == 403, r.text
        assert r.json()["detail"] == (f"Deployment ad spec.module: module {digest[:19]} is not shared with tenant "
                                      "acme (a node admin grants it by pushing it as acme/<name>, or shares it "
                                      "with every tenant by pushing it under a node name)")
        # granted to acme alone: a node admin publishes it in acme's namespace
        assert push(a, ECHO_WASM, name="acme/echo", version="1").status_code == 201
        r = apply(t["acme"], confined("ad", digest, "acme"))
        assert r.status_code == 200 and r.json()["problems"] == [], r.text
        assert apply(t["globex"], confined("gd", digest, "globex")).status_code == 403
        # shared with every tenant: a node admin publishes it under a node name
        assert push(a, ECHO_WASM, name="echo", version="1").status_code == 201
        assert apply(t["globex"], confined("gd", "echo:1", "globex")).status_code == 200
    finally:
        api.stop()
