"""What an operator meets at the command line: `iotwasm up`, the client commands and
`iotwasm data` against real nodes in their own processes, the fleet against a real
nats-server, and the simulator the demo runs on."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
from pathlib import Path

import httpx
import pytest
import wasmtime

from apinode import deployment, http_route, wait_for
from brokers import free_port
from conftest import ECHO_WAT
from test_cli_client import CLI, cli, node  # noqa: F401  (fixture)

ECHO = """apiVersion: iotwasm.io/v1
kind: Deployment
metadata: {{name: echo}}
spec:
  module: "{module}"
  capabilities: {{topics: {{subscribe: ["#"], publish: ["#"]}}}}
"""


def _echo_site(tmp: Path, where: str = "manifests", module: str | None = None) -> Path:
    (tmp / "echo.wasm").write_bytes(wasmtime.wat2wasm(ECHO_WAT))
    mdir = tmp / where
    mdir.mkdir(exist_ok=True)
    (mdir / "app.yaml").write_text(
        deployment("echo", module or str(tmp / "echo.wasm")) + "---\n"
        + http_route("ingest", "echo", "/in", "in/{device}", "echoed"))
    return mdir


def _env(tmp: Path) -> dict:
    env = {**os.environ, "IOTWASM_CONFIG": str(tmp / "config.yaml")}
    for k in ("IOTWASM_URL", "IOTWASM_TOKEN", "IOTWASM_CONTEXT", "COLUMNS"):
        env.pop(k, None)
    return env


def test_describe_route_ps_piped_and_describe_without_a_kind(node):  # noqa: F811
    tmp = node["tmp"]
    cli(node, "context", "set", "local", "--url", node["url"], "--token-file", str(node["data"] / "admin.token"))
    site = _echo_site(tmp, "applied", module="echo:1")
    cli(node, "modules", "push", str(tmp / "echo.wasm"), "--name", "echo", "--version", "1")
    cli(node, "apply", "-f", str(site / "app.yaml"))
    node["env"].pop("COLUMNS")   # piped output must not depend on a terminal width
    with httpx.Client() as c:
        for body in (b"fine", b"!boom one", b"!boom two"):
            assert c.post(f"http://127.0.0.1:{node['ingest']}/in?device=d1", content=body).status_code == 202

    # describe route: the recent dead letters, with where, why and a preview of the message
    wait_for(lambda: json.loads(cli(node, "describe", "route", "ingest", "-o", "json").stdout)
             .get("dead_letters") == 2, what="two dead letters")
    text = cli(node, "describe", "route", "ingest").stdout
    assert "recent dead letters" in text
    rows = [ln for ln in text.splitlines() if "!boom" in ln]
    assert len(rows) == 2 and all("echo" in r and "trap" in r for r in rows), text
    # nulls are not shown: the manifest has unset optional fields (e.g. the sink's bus)
    manifest = text[text.index("manifest"):]
    assert "null" not in manifest
    assert json.loads(cli(node, "describe", "route", "ingest", "-o", "json").stdout)["manifest"]["spec"][
        "sinks"][0]["bus"] is None   # the JSON is the API's, whole

    # a kind is needed; the message says which and how
    r = cli(node, "describe", "echo", ok=False)
    assert r.returncode == 1 and r.stderr.strip() == ("error: describe needs a kind first: iotwasm describe "
                                                      "deployment echo or iotwasm describe module echo")
    r = cli(node, "describe", "ingest", ok=False)
    assert "iotwasm describe route ingest" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = cli(node, "describe", "route", ok=False)
    assert r.stderr.strip() == "error: which route? iotwasm describe route NAME (list them: iotwasm get routes)"
    r = cli(node, "describe", "nothing-here", ok=False)
    assert "no object is named 'nothing-here'" in r.stderr

    # ps piped: plain columns, full width, nothing cut (a digest is 71 characters)
    digest = json.loads(cli(node, "ps", "-o", "json").stdout)[0]["module"]
    out = cli(node, "ps").stdout
    assert digest in out and "…" not in out
    assert not any(ch in out for ch in "│┃━─┏┡"), out
    header, row = out.splitlines()[:2]
    assert header.split()[:3] == ["name", "namespace", "state"] and row.split()[:3] == ["echo", "default", "running"]
    assert row.split()[-1] == digest


def test_up_on_a_taken_api_port_fails_in_one_line_unless_no_api(tmp_path):
    mdir = _echo_site(tmp_path)
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        r = subprocess.run([*CLI, "up", str(mdir), "--data", str(tmp_path / "d"), "--api", f"127.0.0.1:{port}",
                            "--http", f"127.0.0.1:{free_port()}", "--seconds", "30"],
                           capture_output=True, text=True, timeout=60, env=_env(tmp_path))
        assert r.returncode == 1, r.stdout + r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: API cannot listen on 127.0.0.1:{port}"), r.stderr
        assert "--api HOST:PORT" in lines[0] and "--no-api" in lines[0]
        r = subprocess.run([*CLI, "up", str(mdir), "--data", str(tmp_path / "d"), "--api", f"127.0.0.1:{port}",
                            "--no-api", "--http", f"127.0.0.1:{free_port()}", "--seconds", "1"],
                           capture_output=True, text=True, timeout=60, env=_env(tmp_path))
        assert r.returncode == 0, r.stderr
        assert "API" not in r.stdout + r.stderr
    finally:
        holder.close()


def test_a_restart_keeps_the_revision_and_a_clean_stop_removes_nothing(tmp_path):
    mdir = _echo_site(tmp_path)
    data = tmp_path / "d"
    for _ in range(3):
        port = free_port()
        p = subprocess.Popen([*CLI, "up", str(mdir), "--data", str(data), "--no-api",
                              "--http", f"127.0.0.1:{port}"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_env(tmp_path))

        def taking() -> bool:   # the route through the deployment acknowledges a message
            try:
                return httpx.post(f"http://127.0.0.1:{port}/in?device=d", content=b"x", timeout=5).status_code == 202
            except httpx.HTTPError:
                return p.poll() is not None
        wait_for(taking, 30, "node taking messages")
        p.send_signal(signal.SIGINT)   # a clean stop
        assert p.wait(30) == 0, p.stdout.read().decode()
    with sqlite3.connect(data / "node.db") as db:
        revs = db.execute("SELECT revision, status FROM revisions WHERE name = 'echo'").fetchall()
        events = [r[0] for r in db.execute("SELECT message FROM events WHERE object = 'echo' ORDER BY id")]
    assert revs == [(1, "serving")], revs
    assert not any("removed" in e for e in events), events
    assert any("node stopping" in e for e in events), events
    # a changed spec is a new revision, as before
    (mdir / "app.yaml").write_text((mdir / "app.yaml").read_text().replace("memory: 16Mi", "memory: 32Mi"))
    r = subprocess.run([*CLI, "up", str(mdir), "--data", str(data), "--no-api", "--http",
                        f"127.0.0.1:{free_port()}", "--seconds", "1"], capture_output=True, text=True, timeout=60,
                       env=_env(tmp_path))
    assert r.returncode == 0, r.stderr
    with sqlite3.connect(data / "node.db") as db:
        revs = db.execute("SELECT revision, status FROM revisions WHERE name = 'echo' ORDER BY revision").fetchall()
    assert revs == [(1, "replaced"), (2, "serving")]


def test_data_reads_the_local_store_without_sqlite3(tmp_path):
    from apinode import ApiNode

    mdir = _echo_site(tmp_path)
    n = ApiNode(tmp_path, manifests=mdir).start()
    try:
        n.ingest("/in", "d1", [b'{"t": 1}', b"!boom", b"\xa5\x01\xff"])
        wait_for(lambda: n.node.routes["ingest"].runner.stats.dead_letters == 1, what="a dead letter")
        with sqlite3.connect(n.data / "node.db") as db:   # what a module keeps, written by the node's own API
            uid = db.execute("SELECT uid FROM objects WHERE name = 'echo' AND retired IS NULL").fetchone()[0]
            db.execute("INSERT INTO kv(uid, key, value) VALUES (?, ?, ?)", (uid, b"last", b"21.5"))
        with sqlite3.connect(n.data / "outbox.db") as db:
            db.execute("INSERT INTO outbox(sink, topic, payload, created) VALUES ('uplink', 't', x'00ff', 1)")
        env = _env(tmp_path)

        def data(*args: str) -> str:
            r = subprocess.run([*CLI, "data", *args, "--data", str(n.data)], capture_output=True, text=True,
                               timeout=60, env=env)
            assert r.returncode == 0, r.stderr
            return r.stdout

        summary = json.loads(data("summary", "-o", "json"))
        assert summary["results"] == {"echoed": 2}
        assert summary["dead_letters"] == [{"route": "ingest", "step": "echo", "count": 1}]
        assert summary["kv"] == {"echo": 1} and summary["outbox"] == {"uplink": 1}
        rows = json.loads(data("results", "echoed", "-o", "json"))
        assert [r["payload"] for r in rows] == [{"base64": "pQH/"}, {"t": 1}]
        assert [r["topic"] for r in rows] == ["in/d1", "in/d1"]
        dead = json.loads(data("dead-letters", "-o", "json"))
        assert len(dead) == 1 and dead[0]["payload"] == "!boom" and dead[0]["kind"] == "trap"
        assert dead[0]["route"] == "ingest" and dead[0]["step"] == "echo"
        table = data("dead-letters", "--route", "ingest")
        assert "!boom" in table and "trap" in table
        assert json.loads(data("dead-letters", "--route", "other", "-o", "json")) == []
        assert json.loads(data("kv", "echo", "-o", "json")) == [{"deployment": "echo", "key": "last", "value": 21.5}]
        assert json.loads(data("outbox", "-o", "json"))[0] | {"oldest": None} == \
            {"sink": "uplink", "messages": 1, "bytes": 2, "oldest": None}
        r = subprocess.run([*CLI, "data", "results", "nope", "--data", str(n.data)], capture_output=True, text=True,
                           timeout=60, env=env)
        assert r.returncode == 1 and r.stderr.strip() == \
            f"error: no results table 'nope' in {n.data / 'store.db'}; there are: echoed"
        r = subprocess.run([*CLI, "data", "summary", "--data", str(tmp_path / "elsewhere")], capture_output=True,
                           text=True, timeout=60, env=env)
        assert r.returncode == 1 and "node.db: no such file" in r.stderr
    finally:
        n.stop()


def test_fleet_invoke_takes_binary_stdin_and_writes_binary_outputs(tmp_path, nats_server):
    mdir = tmp_path / "m"
    mdir.mkdir()
    (tmp_path / "echo.wasm").write_bytes(wasmtime.wat2wasm(ECHO_WAT))
    (mdir / "echo.yaml").write_text(ECHO.format(module=tmp_path / "echo.wasm"))
    env = _env(tmp_path)
    p = subprocess.Popen([*CLI, "up", str(mdir), "--data", str(tmp_path / "d"), "--no-api", "--name", "edge-1",
                          "--fleet", nats_server.url, "--http", f"127.0.0.1:{free_port()}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        def invoke(payload: bytes) -> subprocess.CompletedProcess:
            return subprocess.run([*CLI, "fleet", "invoke", "echo", "--fleet", nats_server.url, "--topic", "t/1"],
                                  input=payload, capture_output=True, timeout=60, env=env)
        wait_for(lambda: p.poll() is not None or invoke(b"ping").returncode == 0, 60, "the node answering")
        frame = bytes([0xA5, 0x01, 0x07, 0x00, 0xFF, 0xFE, 0x80, 0x00, 0x0A, 0x0D, 0x5C, 0x42])
        r = invoke(frame)
        assert r.returncode == 0, r.stderr
        assert r.stdout == b"t/1\t" + frame + b"\n"
        r = invoke(b"!boom")
        assert r.returncode == 3 and b"dead letter (trap) on node edge-1" in r.stderr
        r = subprocess.run([*CLI, "fleet", "invoke", "echo", "--fleet", nats_server.url],
                           input=b"x" * (1024 * 1024 + 1), capture_output=True, timeout=60, env=env)
        assert r.returncode == 1 and b"larger than 1,048,576 bytes" in r.stderr
    finally:
        p.send_signal(signal.SIGINT)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()


def test_fleet_status_names_the_filter_that_kept_each_node_out():
    from iotwasm.fleet.model import FleetDeployment, NodeInfo
    from iotwasm.fleet.status import FleetView

    def info(node_id: str, labels: dict, taints: list[str] = ()) -> NodeInfo:
        return NodeInfo(id=node_id, labels=labels, taints=list(taints), memory=1 << 30, instances=64, time=0)

    dep = FleetDeployment.parse({
        "deployment": {"apiVersion": "iotwasm.io/v1", "kind": "Deployment", "metadata": {"name": "decode"},
                       "spec": {"module": "sha256:" + "0" * 64}},
        "placement": {"replicas": 4, "nodeSelector": {"site": "a"}}})
    view = FleetView(nodes={"a1": (info("a1", {"site": "a"}), 1),
                            "a2": (info("a2", {"site": "a"}, ["dedicated=gpu:NoSchedule"]), 1),
                            "a3": (info("a3", {"site": "a"}), 1),
                            "b1": (info("b1", {"site": "b"}), 1),
                            "x1": (info("x1", {}), 1)},
                     deployments={"decode": (dep, 3)},
                     assignments={"a1": ({"deployments": {"decode": {}}}, 1)}, rollouts={})
    problems = view.deployment_rows()[0]["problems"]
    assert problems == ["1 of 4 copies assigned (node a2: taint dedicated=gpu:NoSchedule not tolerated; "
                        "node a3: not enough free capacity (memory or instances); "
                        "node b1: nodeSelector wants site=a, node has site=b; "
                        "node x1: nodeSelector wants site=a, node has no site)"]
    assert view.summary()["problems"] == [f"deployment decode: {problems[0]}"]


@pytest.mark.parametrize("heat", [0.0, 10.0])
def test_the_simulator_has_heat_waves_a_windowed_average_can_catch(heat):
    from iotwasm.sensors import SensorField, decode_frame

    plain = SensorField(devices=20, sensors=("temperature",), corrupt_rate=0, anomaly_rate=0)
    field = SensorField(devices=20, sensors=("temperature",), corrupt_rate=0, anomaly_rate=0, heat_wave_c=heat)
    hottest = 0.0
    for step in range(0, 7200, 10):   # two simulated hours: every device has its wave once
        base = [decode_frame(f)["value"] for _, f in plain.tick(step)]
        got = [decode_frame(f)["value"] for _, f in field.tick(step)]
        rise = [g - b for g, b in zip(got, base)]
        assert all(-0.011 <= r <= heat + 0.011 for r in rise)   # frames carry hundredths
        hottest = max(hottest, max(got))
    if heat:
        assert hottest > 35   # the demo's rule (avg over 10 s > 30 °C) has something to find
    else:
        assert hottest < 30
