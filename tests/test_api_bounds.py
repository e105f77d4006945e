"""The API reads nothing before it knows the caller, never more than a cap, and answers hostile
input with a short 422: alias bombs, deep nesting, oversized bodies — with and without a
token — against a node in its own process whose memory is measured, and against one in this
process for the details of each answer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
import pytest

import rawhttp
from apinode import ApiNode, wait_for
from brokers import free_port

CLI = [sys.executable, "-m", "iotwasm.cli.main"]
MiB = 1 << 20


def alias_bomb(levels: int = 10, width: int = 9) -> str:
    """A manifest of well under a kilobyte whose metadata.name expands to width**levels strings."""
    anchors = [f"a0: &a0 [{', '.join(['lol'] * width)}]"]
    anchors += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels)]
    return ("apiVersion: iotwasm.io/v1\nkind: Deployment\nx:\n  " + "\n  ".join(anchors)
            + f"\nmetadata:\n  name: *a{levels - 1}\nspec: {{module: echo}}\n")


def deep_yaml(depth: int) -> str:
    """`depth` block sequences nested on one line (``- - - … x``): 2 bytes a level."""
    return "apiVersion: iotwasm.io/v1\nkind: Deployment\nmetadata:\n  name:\n    " + "- " * depth + "x\n"


def deep_json(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


@pytest.fixture()
def api(tmp_path):
    n = ApiNode(tmp_path).start()
    yield n
    n.stop()


def _one_line_422(r: httpx.Response, *phrases: str) -> str:
    assert r.status_code == 422, (r.status_code, r.text[:300])
    assert r.headers["content-type"] == "application/problem+json"
    assert len(r.content) < 2000, len(r.content)
    detail = r.json()["detail"]
    assert "\n" not in detail and all(p in detail for p in phrases), detail
    return detail


def test_an_alias_bomb_is_refused_with_a_short_answer(api):
    text = alias_bomb()
    assert len(text) < 1024
    r = api.admin.post("/v1/apply", content=text, headers={"Content-Type": "application/yaml"})
    detail = _one_line_422(r, "request:", "expands to more than", "aliases counted in full")
    assert detail.startswith("request:10:7: refused:"), detail   # a6, the first list too large expanded
    assert api.admin.get("/healthz").json() == {"status": "ok"}


def test_deep_nesting_is_a_422_with_one_line_not_a_recursion_error(api):
    a = api.admin
    for text, kind in ((deep_yaml(3000), "application/yaml"), ("a: " + "[" * 3000 + "]" * 3000, "application/yaml"),
                       (deep_json(100_000), "application/yaml")):
        _one_line_422(a.post("/v1/apply", content=text, headers={"Content-Type": kind}),
                      "refused: nested deeper than 64 levels")
    # JSON bodies are measured while they stream in, before any parser sees them
    _one_line_422(a.post("/v1/apply", content=deep_json(100_000), headers={"Content-Type": "application/json"}),
                  "body: JSON nested deeper than 32 levels")
    _one_line_422(a.post("/v1/tokens", content=deep_json(10_000), headers={"Content-Type": "application/json"}),
                  "body: JSON nested deeper than 32 levels")
    # brackets inside strings are text, not nesting
    r = a.post("/v1/tokens", json={"name": "[" * 90 + "{" * 9, "role": "viewer"})
    assert r.status_code == 201, r.text


def test_errors_quote_only_an_excerpt_of_the_input(api):
    a = api.admin
    huge = "x" * 300_000
    text = f"apiVersion: iotwasm.io/v1\nkind: Deployment\nmetadata: {{name: {huge}}}\nspec: {{module: echo}}\n"
    detail = _one_line_422(a.post("/v1/apply", content=text), "Deployment xxxx", "characters)")
    assert len(detail) < 1000
    many = "---\n".join(f"apiVersion: iotwasm.io/v1\nkind: Nope{i}\nmetadata: {{name: n{i}}}\n" for i in range(500))
    detail = _one_line_422(a.post("/v1/apply", content=many), "and 480 more problem(s)")
    r = a.post("/v1/tokens", json={"name": "t", "role": "viewer", "expires_in": "y" * 40})
    assert r.status_code == 422 and len(r.json()["detail"]) < 600
    for path in ("/v1/deployments/", "/v1/modules/", "/v1/tenants/", "/v1/tokens/", "/v1/rules/"):
        r = a.request("DELETE" if path == "/v1/tokens/" else "GET", path + "x" * 5000)
        assert r.status_code == 404 and len(r.json()["detail"]) < 200, (path, r.json()["detail"][:300])


def test_no_body_is_read_before_the_caller_is_known(api):
    viewer = api.token("viewer")
    big = str(300 * MiB)
    cases = [({}, 401, "/v1/tokens"), ({"Authorization": "Bearer iot_wrong"}, 401, "/v1/tokens"),
             ({"Authorization": f"Bearer {viewer}"}, 403, "/v1/tokens"),
             ({"Authorization": f"Bearer {viewer}"}, 403, "/v1/apply"),
             ({"Authorization": f"Bearer {api.admin_token}"}, 413, "/v1/apply"),        # over the cap: said at once
             ({"Authorization": f"Bearer {api.admin_token}"}, 413, "/v1/modules")]
    for headers, status, path in cases:
        # the head announces 300 MB; the answer comes before a single byte of it is sent
        r = rawhttp.request(api.server.port, "POST", path, {**headers, "Content-Length": big,
                                                           "Content-Type": "application/json"},
                            rawhttp.pieces(300 * MiB), wait_first=30)
        assert (r.status, r.sent) == (status, 0), (path, headers, r.status, r.sent, r.body[:200])
        assert r.headers["content-type"] == "application/problem+json"


def test_a_streamed_body_is_refused_at_its_cap(api):
    auth = {"Authorization": f"Bearer {api.admin_token}"}
    for path, cap, kind in (("/v1/apply", MiB, "application/yaml"), ("/v1/tokens", 64 * 1024, "application/json"),
                            ("/v1/modules", 64 * MiB, "application/wasm")):
        # no Content-Length: the server counts as it reads, and answers 413 once past the cap
        r = rawhttp.request(api.server.port, "POST", path, {**auth, "Content-Type": kind},
                            rawhttp.pieces(300 * MiB, 64 * 1024), chunked=True)
        assert r.status == 413, (path, r.status, r.body[:300])
        assert f"larger than {cap:,} bytes" in r.json()["detail"]
        assert r.sent < cap + 32 * MiB, (path, r.sent)   # the client did not have to send it all
    assert api.node.registry.list() == []


def test_accepted_connections_do_not_wait_for_delayed_acks(api):
    """TCP_NODELAY on the API's connections: without it every answer on a kept-alive
    connection waits for the client's delayed ACK (about 40 ms)."""
    import socket

    with api.client(api.admin_token) as c:
        assert c.get("/v1/node").status_code == 200
        conns = list(api.server._server.server_state.connections)
        assert conns
        for proto in conns:
            sock = proto.transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1


# --- a node in its own process: what the attacks cost it in memory -------------------------

def _peak_rss(pid: int) -> int:
    """The process's peak resident set size (VmHWM), bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.fixture()
def node_process(tmp_path):
    (tmp_path / "manifests").mkdir()
    port = free_port()
    with open(tmp_path / "node.log", "wb") as log:
        p = subprocess.Popen([*CLI, "up", str(tmp_path / "manifests"), "--data", str(tmp_path / "data"),
                              "--api", f"127.0.0.1:{port}", "--http", f"127.0.0.1:{free_port()}"],
                             stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def up():
        try:
            return httpx.get(url + "/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return p.poll() is not None
    wait_for(up, 60, "node API")
    assert p.poll() is None, (tmp_path / "node.log").read_text()
    yield p, port, (tmp_path / "data" / "admin.token").read_text().strip()
    p.send_signal(signal.SIGINT)
    try:
        p.wait(30)
    except subprocess.TimeoutExpired:
        p.kill()


def test_hostile_bodies_leave_the_node_s_memory_where_it_was(node_process):
    p, port, admin = node_process
    auth = {"Authorization": f"Bearer {admin}"}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=auth, timeout=60) as c:
        # every path the attacks take has run once, so what follows measures the attacks alone
        assert c.post("/v1/tokens", json={"name": "warm", "role": "viewer"}).status_code == 201
        assert c.post("/v1/apply", content="a: [1]").status_code == 422
        assert c.post("/v1/apply", content=alias_bomb(levels=3)).status_code == 422
        before = _peak_rss(p.pid)
        answers = [
            # 300 MB of JSON without a token, announced and streamed
            rawhttp.request(port, "POST", "/v1/tokens", {"Content-Type": "application/json",
                                                         "Content-Length": str(300 * MiB)},
                            rawhttp.pieces(300 * MiB, fill=b'{"a":'), wait_first=30).status,
            rawhttp.request(port, "POST", "/v1/tokens", {"Content-Type": "application/json"},
                            rawhttp.pieces(300 * MiB, fill=b'[1,'), chunked=True).status,
            # 300 MB with a token, streamed: refused at the cap
            rawhttp.request(port, "POST", "/v1/apply", {**auth, "Content-Type": "application/yaml"},
                            rawhttp.pieces(300 * MiB, fill=b"a: b\n"), chunked=True).status,
            rawhttp.request(port, "POST", "/v1/tokens", {**auth, "Content-Type": "application/json"},
                            rawhttp.pieces(300 * MiB, fill=b'"xxxxxxxx",'), chunked=True).status,
            c.post("/v1/apply", content=alias_bomb()).status_code,
            c.post("/v1/apply", content=deep_yaml(3000)).status_code,
            c.post("/v1/apply", content=deep_json(100_000), headers={"Content-Type": "application/json"}).status_code,
        ]
        assert answers == [401, 401, 413, 413, 422, 422, 422]
        assert c.get("/v1/node").status_code == 200
    grown = _peak_rss(p.pid) - before
    print(f"peak RSS {before / MiB:.0f} MiB before the attacks, grew by {grown / MiB:.1f} MiB")
    assert grown < 48 * MiB, f"peak RSS grew by {grown / MiB:.0f} MiB"
    assert p.poll() is None and os.path.exists(f"/proc/{p.pid}")


@pytest.mark.parametrize("method,path,kw,where", [
    ("GET", "/v1/dead-letters", {"params": {"before": 2**63}}, "before"),
    ("GET", "/v1/audit/verify", {"params": {"seq": 2**63, "head": "0" * 64}}, "seq"),
    ("POST", "/v1/routes/r/dead-letters/replay", {"json": {"ids": [1, 2**63]}}, "ids"),
])
def test_a_number_sqlite_cannot_hold_is_a_422_not_a_server_error(api, method, path, kw, where):
    """Found by the API fuzz test: ?before=9223372036854775808 reached SQLite (OverflowError,
    500). Ids and row numbers are bounded where they enter."""
    r = api.admin.request(method, path, **kw)
    detail = _one_line_422(r)
    assert where in detail, detail
