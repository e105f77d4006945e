"""The CLI drives a real node end to end: `iotwasm up` in its own process with the API on a
free port, every command run as a user would (real processes, a real config file)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import httpx
import pytest
import wasmtime

from apinode import deployment, http_route, wait_for
from brokers import free_port
from conftest import ECHO_WAT, TEST_MODULES

CLI = [sys.executable, "-m", "iotwasm.cli.main"]


@pytest.fixture()
def node(tmp_path):
    mdir = tmp_path / "manifests"
    mdir.mkdir()
    data = tmp_path / "data"
    api_port, ingest_port = free_port(), free_port()
    log = open(tmp_path / "node.log", "wb")
    p = subprocess.Popen([*CLI, "up", str(mdir), "--data", str(data), "--name", "cli-node",
                          "--api", f"127.0.0.1:{api_port}", "--http", f"127.0.0.1:{ingest_port}"],
                         stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{api_port}"

    def up():
        try:
            return httpx.get(url + "/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return p.poll() is not None
    wait_for(up, 30, "node API")
    assert p.poll() is None, (tmp_path / "node.log").read_text()
    env = {**os.environ, "IOTWASM_CONFIG": str(tmp_path / "config.yaml"), "COLUMNS": "200"}
    env.pop("IOTWASM_URL", None), env.pop("IOTWASM_TOKEN", None), env.pop("IOTWASM_CONTEXT", None)
    yield {"url": url, "data": data, "tmp": tmp_path, "env": env, "ingest": ingest_port, "proc": p}
    p.send_signal(signal.SIGINT)
    try:
        p.wait(30)
    except subprocess.TimeoutExpired:
        p.kill()


def cli(node, *args, ok: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
    r = subprocess.run([*CLI, *args], capture_output=True, timeout=120, env=node["env"], text=True, input=stdin)
    if ok:
        assert r.returncode == 0, f"{args}: {r.stderr}{r.stdout}"
    return r


def test_cli_drives_a_node_end_to_end(node):
    tmp = node["tmp"]
    out = cli(node, "context", "set", "local", "--url", node["url"], "--token-file", str(node["data"] / "admin.token"))
    assert "context local" in out.stdout
    assert (tmp / "config.yaml").stat().st_mode & 0o777 == 0o600

    # modules: signed push into a tenant that requires signatures
    wasm = tmp / "host_calls.wasm"
    wasm.write_bytes(wasmtime.wat2wasm((TEST_MODULES / "host_calls.wat").read_text()))
    unsigned = tmp / "echo.wasm"
    unsigned.write_bytes(wasmtime.wat2wasm(ECHO_WAT))
    cli(node, "keygen", "--out", str(tmp / "dev"))
    assert (tmp / "dev.key").stat().st_mode & 0o777 == 0o600
    cli(node, "sign", str(wasm), "--key", str(tmp / "dev.key"))
    assert json.loads((tmp / "host_calls.wasm.sig").read_text())["digest"].startswith("sha256:")
    cli(node, "tenant", "set", "acme", "--prefix", "acme/", "--require-signatures", "--max-deployments", "3",
        "--max-instances", "4")
    cli(node, "tenant", "trust", "acme", "--key", str(tmp / "dev.pub"))
    token = cli(node, "token", "create", "acme-ops", "--role", "operator", "--tenant", "acme").stdout.strip()
    assert token.startswith("iot_")
    brief = json.loads(cli(node, "token", "create", "brief", "--role", "viewer", "--expires", "30d",
                           "-o", "json").stdout)
    assert brief["expires"] > time.time() + 29 * 86400
    listed = cli(node, "token", "ls").stdout
    assert time.strftime("%Y-%m-%d", time.localtime(brief["expires"])) in listed and "(expired)" not in listed
    r = cli(node, "token", "create", "x", "--role", "viewer", "--expires", "soon", ok=False)
    assert r.returncode == 1 and "body.expires_in" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    # a token is never an argument (the process list and shell history would keep it): stdin or a file
    r = cli(node, "context", "set", "acme", "--url", node["url"], "--token", token, ok=False)
    assert r.returncode == 1 and "--token-file -" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    cli(node, "context", "set", "acme", "--url", node["url"], "--token-file", "-", stdin=token + "\n")  # now current
    pushed = json.loads(cli(node, "modules", "push", str(wasm), "--name", "acme/counter", "--version", "1.0.0",
                            "-o", "json").stdout)
    assert pushed["tags"] == ["acme/counter:1.0.0"] and len(pushed["signed_by"]) == 1
    r = cli(node, "modules", "push", str(unsigned), "--name", "acme/echo", "--version", "1", ok=False)
    assert r.returncode == 1 and "is not signed and signatures are required" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    ls = json.loads(cli(node, "modules", "ls", "-o", "json").stdout)
    assert [m["tags"] for m in ls] == [["acme/counter:1.0.0"]]

    # apply, ps, describe
    manifests = tmp / "app.yaml"
    manifests.write_text(deployment("counter", "acme/counter:1.0.0", namespace="acme", publish="acme/#",
                                    subscribe="acme/#", host="log, clock, random, kv, config, metrics")
                         + "---\n" + http_route("ingest", "counter", "/acme/in", "acme/in/{device}", "counted",
                                                namespace="acme", dead_letter="acme/dead/{route}"))
    r = cli(node, "apply", "-f", str(manifests))
    assert "created" in r.stdout
    r = cli(node, "apply", "-f", str(manifests), "-o", "json")
    assert {a["action"] for a in json.loads(r.stdout)["applied"]} == {"unchanged"}
    ps = json.loads(cli(node, "ps", "-o", "json").stdout)
    assert [(d["name"], d["state"]) for d in ps] == [("counter", "running")]
    with httpx.Client() as c:
        for i in range(4):
            assert c.post(f"http://127.0.0.1:{node['ingest']}/acme/in?device=d{i}", content=b"x").status_code == 202
    wait_for(lambda: json.loads(cli(node, "describe", "deployment", "counter", "-o", "json").stdout)
             .get("messages") == 4, what="4 messages counted")
    table = cli(node, "describe", "deployment", "counter").stdout
    assert "acme/counter:1.0.0" in table and "instances" in table and "last used" in table and "MiB" in table
    assert "counter" in cli(node, "get", "routes").stdout

    # logs (the module logs one line per message), then follow them while a message arrives
    lines = [json.loads(ln) for ln in cli(node, "logs", "counter", "-o", "json").stdout.splitlines()]
    assert [ln["text"] for ln in lines] == ["host_calls: input counted"] * 4
    follower = subprocess.Popen([*CLI, "logs", "counter", "-f", "--since", str(lines[-1]["seq"]), "-o", "json"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=node["env"], text=True)
    try:
        time.sleep(0.5)  # let it subscribe; the assertion below does not depend on this
        with httpx.Client() as c:
            c.post(f"http://127.0.0.1:{node['ingest']}/acme/in?device=late", content=b"x")
        first = json.loads(follower.stdout.readline())
        assert first["text"] == "host_calls: input counted" and first["seq"] > lines[-1]["seq"]
    finally:
        follower.terminate()
        follower.wait(10)

    # scale, history, rollback, rm
    r = json.loads(cli(node, "scale", "counter", "2", "-o", "json").stdout)
    assert r["replicas"] == 2
    assert json.loads(cli(node, "scale", "counter", "2", "--context", "acme", "-o", "json").stdout)["replicas"] == 2
    r = cli(node, "scale", "counter", "9", "--context", "acme", ok=False)
    assert r.returncode == 1 and "9 instances exceed its quota of 4" in r.stderr
    # a range: the tenant's quota counts its max
    r = json.loads(cli(node, "scale", "counter", "0..3", "--context", "acme", "-o", "json").stdout)
    assert (r["scaling"]["min"], r["scaling"]["max"]) == (0, 3)
    r = cli(node, "scale", "counter", "0..9", "--context", "acme", ok=False)
    assert r.returncode == 1 and "9 instances exceed its quota of 4" in r.stderr
    assert "MIN..MAX" in cli(node, "scale", "counter", "1..", ok=False).stderr
    cli(node, "scale", "counter", "2")
    manifests.write_text(manifests.read_text().replace("memory: 16Mi", "memory: 32Mi"))
    # the rollout is followed until the health gate decides, which needs traffic
    import threading
    stop = threading.Event()

    def traffic():
        with httpx.Client() as c:
            while not stop.is_set():
                c.post(f"http://127.0.0.1:{node['ingest']}/acme/in?device=d9", content=b"x")
                stop.wait(0.1)
    t = threading.Thread(target=traffic, daemon=True)
    t.start()
    try:
        r = cli(node, "apply", "-f", str(manifests), "--context", "acme", "--wait", "60", "-o", "json")
    finally:
        stop.set()
        t.join()
    assert json.loads(r.stdout[r.stdout.index("}\n{") + 2:]) == {"counter": "serving"}
    hist = json.loads(cli(node, "history", "counter", "-o", "json").stdout)
    assert [(h["revision"], h["status"]) for h in hist] == [(1, "replaced"), (2, "serving")]
    r = json.loads(cli(node, "rollback", "counter", "-o", "json").stdout)
    assert r["revision"] == 3
    r = cli(node, "rm", "deployment", "counter", ok=False)
    assert r.returncode == 1 and "is a step of route(s) ingest" in r.stderr
    cli(node, "rm", "route", "ingest")
    cli(node, "rm", "deployment", "counter")
    assert json.loads(cli(node, "ps", "-o", "json").stdout) == []
    cli(node, "modules", "rm", "acme/counter:1.0.0")

    # audit: listed, verified, and an edited row is detected (through the node and offline)
    r = cli(node, "audit", "verify", ok=False)
    assert r.returncode == 1 and "needs role admin" in r.stderr
    cli(node, "context", "use", "local")
    rows = json.loads(cli(node, "audit", "--action", "apply", "-o", "json").stdout)
    assert rows and all(r["tenant"] == "acme" for r in rows)
    assert "ok:" in cli(node, "audit", "verify").stdout
    with sqlite3.connect(node["data"] / "audit.db") as db:
        db.execute("UPDATE audit SET actor = 'someone else' WHERE id = 3")
    r = cli(node, "audit", "verify", ok=False)
    assert r.returncode == 1 and "row 3: contents do not match its hash" in r.stderr
    r = cli(node, "audit", "verify", "--data", str(node["data"]), ok=False)
    assert r.returncode == 1 and "row 3" in r.stderr


def test_cli_errors_are_one_line(node):
    r = cli(node, "ps", ok=False)
    assert r.returncode == 1 and "which node?" in r.stderr
    node["env"]["IOTWASM_URL"] = node["url"]
    r = cli(node, "ps", ok=False)
    assert r.returncode == 1 and r.stderr.strip() == "error: 401 this call needs 'Authorization: Bearer <token>'"
    node["env"]["IOTWASM_TOKEN"] = (node["data"] / "admin.token").read_text().strip()
    r = cli(node, "describe", "deployment", "ghost", ok=False)
    assert r.stderr.strip() == "error: 404 no deployment 'ghost'"
    r = cli(node, "get", "gadgets", ok=False)
    assert "unknown kind 'gadgets'" in r.stderr


def test_api_beyond_localhost_needs_tls_or_an_explicit_flag(tmp_path):
    (tmp_path / "m").mkdir()
    r = subprocess.run([*CLI, "up", str(tmp_path / "m"), "--data", str(tmp_path / "d"), "--api", "0.0.0.0:1",
                        "--seconds", "1"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "without TLS" in r.stderr and "--api-insecure" in r.stderr
