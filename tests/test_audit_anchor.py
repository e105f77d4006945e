"""The audit chain proves no row was changed; an anchor kept elsewhere also proves none was cut
from its end and the log was not emptied or rewritten: in the log itself, through the CLI
offline and through the API, and from the anchors a node in a fleet publishes to JetStream."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys

import pytest

from apinode import ApiNode, wait_for


from iotwasm.api.audit import AuditLog, check_anchor

CLI = [sys.executable, "-m", "iotwasm.cli.main"]


def cli(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200", **(env or {})})


def cut(db, below: int | None = None) -> None:
    """Delete rows from the end of an audit log (all of them without `below`)."""
    with sqlite3.connect(db) as c:
        c.execute("DELETE FROM audit" + (" WHERE id >= ?" if below else ""), (below,) if below else ())


def test_an_anchor_shows_rows_cut_from_the_end_an_emptied_log_and_a_rewrite(tmp_path):
    log = AuditLog(tmp_path / "audit.db")
    try:
        assert log.verify([log.anchor("n1")])["ok"]              # an empty log's anchor holds for any log
        for i in range(5):
            log.append("ops", "tenant.put", f"tenant/t{i}")
        a = check_anchor(json.loads(json.dumps(log.anchor("n1"))))
        assert (a["seq"], a["rows"], a["node"]) == (5, 5, "n1")
        log.append("ops", "tenant.put", "tenant/t5")
        assert log.verify([a]) == {**log.verify([a]), "ok": True, "rows": 6, "anchors": 1}
        cut(tmp_path / "audit.db", below=4)
        assert log.verify()["ok"]                                # the chain alone cannot tell
        v = log.verify([a])
        assert not v["ok"] and v["problem"].startswith("row 5 of the anchor of ")
        assert v["problem"].endswith("is gone: the log ends at row 3 (rows were cut from its end)")
        cut(tmp_path / "audit.db")
        assert log.verify()["ok"] and log.verify()["rows"] == 0
        assert log.verify([a])["problem"].endswith("the log ends at row 0 (every row was deleted)")
        for i in range(5):                                       # a whole new chain of the same length
            log.append("intruder", "tenant.put", f"tenant/t{i}")
        assert log.verify()["ok"]
        assert log.verify([a])["problem"].startswith("row 5 does not match the anchor of ")
        # the rewritten log's own anchor pins the same row: the older one still refuses it
        b = log.anchor("n1")
        assert b["seq"] == a["seq"] and log.verify([b])["ok"]
        assert not log.verify([a, b])["ok"] and not log.verify([b, a])["ok"]
    finally:
        log.close()
    for damaged, says in (({**a, "seq": 4}, "damaged"), ({**a, "head": "0" * 64}, "damaged"),
                          ({**a, "digest": "x"}, "damaged"), ({"seq": 5}, "not an audit anchor"), ([], "not an")):
        with pytest.raises(ValueError, match=says):
            check_anchor(damaged, "anchor.json")


def test_audit_anchor_and_verify_from_the_cli_offline(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    log = AuditLog(data / "audit.db")
    for i in range(4):
        log.append("ops", "apply", f"deployment/d{i}")
    log.close()
    r = cli("audit", "anchor", "--data", str(data), "--out", str(tmp_path / "anchor.json"))
    assert r.returncode == 0 and "anchor of row 4 (4 rows)" in r.stderr, r.stderr
    assert cli("audit", "verify", "--data", str(data), "--anchor", str(tmp_path / "anchor.json")).returncode == 0
    cut(data / "audit.db", below=3)
    assert cli("audit", "verify", "--data", str(data)).returncode == 0
    r = cli("audit", "verify", "--data", str(data), "--anchor", str(tmp_path / "anchor.json"))
    assert r.returncode == 1 and "row 4 of the anchor of" in r.stderr and "cut from its end" in r.stderr
    (tmp_path / "bad.json").write_text(json.dumps({**json.loads((tmp_path / "anchor.json").read_text()), "seq": 2}))
    r = cli("audit", "verify", "--data", str(data), "--anchor", str(tmp_path / "bad.json"))
    assert r.returncode == 1 and "bad.json: the anchor is damaged" in r.stderr and len(r.stderr.splitlines()) == 1


def test_audit_anchor_and_verify_through_the_api(tmp_path):
    n = ApiNode(tmp_path).start()
    try:
        env = {"IOTWASM_URL": n.url, "IOTWASM_TOKEN": n.admin_token, "IOTWASM_CONFIG": str(tmp_path / "c.yaml")}
        for i in range(3):
            assert n.admin.put(f"/v1/tenants/t{i}", json={}).status_code == 200
        r = cli("audit", "anchor", "--out", str(tmp_path / "anchor.json"), env=env)
        assert r.returncode == 0, r.stderr
        anchor = json.loads((tmp_path / "anchor.json").read_text())
        assert anchor["node"] == "testnode" and anchor["seq"] >= 3
        assert cli("audit", "verify", "--anchor", str(tmp_path / "anchor.json"), env=env).returncode == 0
        v = n.admin.get("/v1/audit/verify", params={"seq": anchor["seq"], "head": anchor["head"]}).json()
        assert v["ok"] and v["anchors"] == 1
        cut(n.data / "audit.db", below=2)
        r = cli("audit", "verify", "--anchor", str(tmp_path / "anchor.json"), env=env)
        assert r.returncode == 1 and f"row {anchor['seq']} of the anchor is gone" in r.stderr, r.stderr
        # the chain is every tenant's: a tenant admin neither anchors nor verifies it
        tenant_admin = n.client(n.token("admin", "t0"))
        for path in ("/v1/audit/anchor", "/v1/audit/verify"):
            r = tenant_admin.get(path)
            assert r.status_code == 403 and "node admin" in r.json()["detail"], (path, r.text)
        r = n.admin.get("/v1/audit/verify", params={"seq": 3})
        assert r.status_code == 422 and "both seq and head" in r.json()["detail"]
    finally:
        n.stop()


def test_a_node_in_a_fleet_keeps_its_anchor_in_jetstream(nats_server, tmp_path):  # noqa: F811
    from iotwasm.fleet import FleetStore

    async def anchors() -> list:
        store = await FleetStore.connect(nats_server.url)
        try:
            return await store.audit_anchors("anchored")
        finally:
            await store.close()

    n = ApiNode(tmp_path, fleet={"url": nats_server.url, "heartbeat_s": 0.3}, name="anchored",
                anchor_interval_s=0.2).start()
    try:
        for i in range(3):
            assert n.admin.put(f"/v1/tenants/t{i}", json={}).status_code == 200
        last = n.admin.get("/v1/audit/verify").json()["rows"]
        wait_for(lambda: (a := asyncio.run(anchors())) and a[-1]["seq"] >= last, 30, "the anchor in JetStream")
    finally:
        n.stop()
    published = asyncio.run(anchors())
    assert all(check_anchor(a) for a in published) and published[-1]["node"] == "anchored"
    data = ["--data", str(n.data), "--anchor", nats_server.url, "--node", "anchored"]
    r = cli("audit", "verify", *data)
    assert r.returncode == 0 and f"{len(published)} anchor(s) hold" in r.stdout, r.stdout + r.stderr
    cut(n.data / "audit.db", below=published[-1]["seq"])
    r = cli("audit", "verify", *data)
    assert r.returncode == 1 and "cut from its end" in r.stderr, r.stderr
    r = cli("audit", "verify", "--data", str(n.data), "--anchor", nats_server.url, "--node", "elsewhere")
    assert r.returncode == 1 and "no audit anchor of node 'elsewhere'" in r.stderr
