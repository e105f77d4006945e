"""What a node keeps at rest, through the real API: its data directory is private to the node's
user, secret config and env entries are stored whole for the module (and a fleet keeps them for
its nodes) but never shown back, and a blob changed on disk is refused at load."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import httpx

from apinode import ECHO_WASM, ApiNode, deployment, http_route, wait_for
from iotwasm.engine.module import digest_of
from iotwasm.node.manifests import parse_documents
from tenancy import COUNTER_WASM, apply, push, running, tenants

# --- secrets at rest and in views ------------------------------------------------------------

def _private(root: Path) -> list[str]:
    """Every path under root that someone other than its owner may read, with its mode."""
    loose = []
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if mode & 0o077:
            loose.append(f"{path.relative_to(root.parent)} {mode:o}")
    return loose


def test_the_data_directory_is_private_to_the_nodes_user(tmp_path):
    old = os.umask(0o022)  # what most systems give a process
    try:
        api = ApiNode(tmp_path).start()
        try:
            a = api.admin
            assert push(a, ECHO_WASM, name="e", version="1").status_code == 201
            r = apply(a, deployment("pd", "e:1") + "---\n" + http_route("pr", "pd", "/p", "p/{device}", "p_out"))
            assert r.status_code == 200, r.text
            api.ingest("/p", "d1", [b"1"])
            wait_for(lambda: api.node.store.count("p_out") == 1, what="delivered")
            files = {p.name for p in api.data.rglob("*")}
            assert {"node.db-wal", "node.db-shm", "index.db-wal", "api.db-wal", "audit.db-wal"} <= files
            assert any(p.parent.name == "sha256" for p in api.data.rglob("*"))  # a blob
            assert _private(api.data) == []
        finally:
            api.stop()
        # a data directory made before: everything loosened is tightened at the next start
        for path in [api.data, *api.data.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        api = ApiNode(tmp_path).start()
        try:
            assert _private(api.data) == []
        finally:
            api.stop()
    finally:
        os.umask(old)


SECRET_CONFIG = "cfg-SECRET-4711"
SECRET_ENV = "env-SECRET-0815"


def vault(config_secret: str = SECRET_CONFIG, extra: str = "") -> str:
    return f"""apiVersion: iotwasm.io/v1
kind: Deployment
metadata: {{name: vault, namespace: acme}}
spec:
  module: "acme/echo:1"
  config:
    region: eu-1
    api_key: {{value: "{config_secret}", secret: true{extra}}}
  capabilities:
    host: [log]
    topics: {{publish: ["acme/#"], subscribe: ["acme/#"]}}
    env:
      MODE: plain
      TOKEN: {{value: "{SECRET_ENV}", secret: true}}
"""


def test_secret_config_and_env_entries_are_never_shown_back(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    api = ApiNode(tmp_path).start()
    try:
        a = api.admin
        acme = tenants(api, "acme")["acme"]
        viewer = api.client(api.token("viewer", "acme", "acme-view"))
        assert push(acme, ECHO_WASM, name="acme/echo", version="1").status_code == 201
        r = apply(acme, vault(extra=", oops: 1"))  # an error names the field, never the value
        assert r.status_code == 422 and "api_key" in r.json()["detail"], r.text
        assert SECRET_CONFIG not in r.text
        r = apply(acme, vault())
        assert r.status_code == 200 and r.json()["problems"] == [], r.text
        running(api, "vault")
        caps = api.node.deployments["vault"].handle.current.host.capabilities
        assert caps.config["api_key"] == SECRET_CONFIG and caps.env["TOKEN"] == SECRET_ENV  # the module gets them

        spec = viewer.get("/v1/deployments/vault").json()["manifest"]["spec"]
        assert spec["config"] == {"region": "eu-1", "api_key": {"secret": True}}
        assert spec["capabilities"]["env"] == {"MODE": "plain", "TOKEN": {"secret": True}}
        # a changed secret value is a change: a new revision runs it, still unseen
        r = apply(acme, vault("cfg-SECRET-4712"))
        assert r.status_code == 200 and r.json()["applied"][0]["action"] == "configured", r.text
        wait_for(lambda: api.node.deployments["vault"].handle.current.host.capabilities.config["api_key"]
                 == "cfg-SECRET-4712", what="the new secret in use")
        views = ["/v1/deployments", "/v1/deployments/vault", "/v1/deployments/vault/history",
                 "/v1/deployments/vault/logs", "/v1/events?limit=1000", "/v1/node", "/metrics", "/v1/modules",
                 "/v1/audit?limit=1000"]
        for client in (viewer, a):
            for path in views:
                r = client.get(path)
                if r.status_code == 200:
                    assert "SECRET" not in r.text, path
    finally:
        api.stop()
    api = ApiNode(tmp_path).start()  # stored whole: after a restart the module still gets them
    try:
        running(api, "vault")
        caps = api.node.deployments["vault"].handle.current.host.capabilities
        assert caps.config["api_key"] == "cfg-SECRET-4712" and caps.env["TOKEN"] == SECRET_ENV
        assert "SECRET" not in api.admin.get("/v1/deployments/vault").text
    finally:
        api.stop()
    assert "SECRET" not in caplog.text


def test_a_fleet_deployment_keeps_its_secrets_for_its_nodes_and_shows_them_to_no_one():
    from iotwasm.fleet.model import FleetDeployment
    from iotwasm.fleet.status import FleetView

    d = parse_documents(vault().replace("acme/echo:1", "sha256:" + "a" * 64))[0]
    fd = FleetDeployment(deployment=d)
    stored = fd.to_json()  # what the fleet keeps in JetStream for its nodes
    assert SECRET_CONFIG.encode() in stored and SECRET_ENV.encode() in stored
    again = FleetDeployment.parse(stored)
    assert again.deployment.capabilities().config["api_key"] == SECRET_CONFIG
    view = FleetView(nodes={}, deployments={"vault": (again, 1)}, rollouts={}, assignments={})
    assert "SECRET" not in json.dumps(view.deployment_rows())
    assert "SECRET" not in json.dumps(again.deployment.model_dump(mode="json", by_alias=True))


# --- blobs verified at load ------------------------------------------------------------------

def test_a_blob_changed_on_disk_is_refused_at_load(tmp_path):
    api = ApiNode(tmp_path).start()
    try:
        a = api.admin
        digest = push(a, ECHO_WASM, name="e", version="1").json()["digest"]
        r = apply(a, deployment("te", "e:1") + "---\n" + http_route("tr", "te", "/t", "t/{device}", "t_out"))
        assert r.status_code == 200 and r.json()["problems"] == [], r.text
        running(api, "te")
    finally:
        api.stop()
    blob = tmp_path / "data" / "modules" / "blobs" / "sha256" / digest.split(":", 1)[1]
    blob.chmod(0o600)
    blob.write_bytes(COUNTER_WASM)

    api = ApiNode(tmp_path, node_config={"http_ack_timeout_s": 0.5}).start()
    try:
        a = api.admin
        view = wait_for(lambda: (v := a.get("/v1/deployments/te").json()).get("state") == "error" and v,
                        what="the deployment refused")
        error = view["last_error"]
        assert error == (f"module blob {blob} has digest {digest_of(COUNTER_WASM)}, not {digest} "
                         "(modified on disk; push the module again to repair it)"), error
        assert view["module_digest"] == digest
        assert any(error in e["message"] for e in a.get("/v1/events", params={"object": "te"}).json())
        # not acknowledged (nothing runs the route's step), and nothing reaches the store
        r = httpx.post(f"http://127.0.0.1:{api.ingest_port}/t?device=d1", content=b'"x"', timeout=30)
        assert r.status_code == 503, r.text
        assert api.node.store.count("t_out") == 0
        # pushing the genuine module again repairs the blob; the next start runs it
        assert push(a, ECHO_WASM).status_code == 201
        assert digest_of(blob.read_bytes()) == digest
    finally:
        api.stop()
