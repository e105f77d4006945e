"""Outbound HTTP from modules (capability `http`): a C module makes requests to a local
server started here; only URLs of the allow-list are reachable, and only as far as the
module's time limit and the grant's response cap allow."""

from __future__ import annotations

import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from iotwasm.engine import Capabilities, HostContext, Limits, prepare
from iotwasm.engine.http_client import HttpGrant
from iotwasm.errors import CapabilityDenied, ConfigError
from iotwasm.message import Message

from conftest import ROOT, module_path


@pytest.fixture(scope="module")
def fetch_wasm(tmp_path_factory):
    out = tmp_path_factory.mktemp("http") / "http_fetch.wasm"
    subprocess.run(["clang", "--target=wasm32", "-O2", "-nostdlib", "-Wl,--no-entry", "-Wall", "-Werror",
                    "-I", str(ROOT / "sdk" / "c"), "-o", str(out), str(module_path("http_fetch.c"))],
                   check=True)
    return out


class Server:
    """A local HTTP server: what it was asked is recorded; /slow waits until released."""

    def __init__(self):
        self.seen: list[tuple[str, str, dict, bytes]] = []
        self.release = threading.Event()
        srv = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _answer(self, status: int, body: bytes = b"", headers: dict | None = None):
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _handle(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                srv.seen.append((self.command, self.path, dict(self.headers), body))
                p = self.path
                if p == "/api/hello":
                    self._answer(200, b"hi")
                elif p == "/api/echo":
                    self._answer(201, self.headers.get("X-Tag", "").encode() + b":" + body)
                elif p == "/api/redir-in":
                    self._answer(302, headers={"Location": "/api/hello"})
                elif p == "/api/redir-out":
                    self._answer(302, headers={"Location": "/secret"})
                elif p == "/api/big":
                    self._answer(200, b"x" * 200_000)
                elif p == "/api/chunked":   # no Content-Length: the cap is enforced while reading
                    self.send_response(200)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for _ in range(50):
                        self.wfile.write(b"1000\r\n" + b"y" * 4096 + b"\r\n")
                    self.wfile.write(b"0\r\n\r\n")
                elif p == "/api/slow":
                    srv.release.wait(30)
                    try:
                        self._answer(200, b"late")
                    except (BrokenPipeError, ConnectionResetError):
                        pass  # the guest's deadline passed: its client is gone, as the test wants
                else:
                    self._answer(404, b"no")

            do_GET = do_POST = do_PUT = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def guest(runtime, wasm, grant: HttpGrant | None, logs=None, timeout="2s"):
    caps = Capabilities.grant("http", http=grant) if grant else Capabilities.grant("http")
    ctx = HostContext("fetch", caps, on_log=lambda n, lvl, t: logs.append(t) if logs is not None else None)
    return prepare(runtime.load(wasm), Limits.parse(timeout=timeout), ctx).new_guest()


def run(g, *requests: str):
    res = g.process([Message("t", r.encode()) for r in requests])
    out = {o.index: o.payload.decode() for o in res.outputs}
    dead = {d.index: str(d.error) for d in res.dead_letters}
    return [out.get(i, dead.get(i)) for i in range(len(requests))]


def test_a_module_without_the_grant_cannot_even_start(runtime, fetch_wasm):
    ctx = HostContext("fetch", Capabilities.grant("log"))
    with pytest.raises(CapabilityDenied, match=r"imports iot.http_request, which needs capability 'http'"):
        prepare(runtime.load(fetch_wasm), Limits(), ctx)


def test_listed_urls_work_and_others_fail_naming_the_url_and_the_list(runtime, fetch_wasm, server):
    base = f"http://127.0.0.1:{server.port}"
    grant = HttpGrant(allow=(f"{base}/api/*",))
    g = guest(runtime, fetch_wasm, grant)
    hello, echo, secret, other_port, dots, user = run(
        g, f"GET {base}/api/hello\n\n",
        f"POST {base}/api/echo\nX-Tag: t1\n\npayload-bytes",
        f"GET {base}/secret\n\n",
        f"GET http://127.0.0.1:{server.port + 1}/api/hello\n\n",
        f"GET {base}/api/../secret\n\n",
        f"GET http://me:pw@127.0.0.1:{server.port}/api/hello\n\n")
    assert hello == "200 2 hi"
    assert echo == "201 16 t1:payload-bytes"
    allow = f"(allow-list: {base}/api/*)"
    assert secret.endswith(f"http request to '{base}/secret' is not in the allow-list {allow}")
    assert "is not in the allow-list" in other_port and str(server.port + 1) in other_port
    assert dots.endswith(f"http request to '{base}/api/../secret' has dot segments in its path {allow}")
    assert "carries user info" in user
    # the denied requests never reached the server
    assert [(m, p) for m, p, _, _ in server.seen] == [("GET", "/api/hello"), ("POST", "/api/echo")]
    assert server.seen[1][2]["X-Tag"] == "t1" and server.seen[1][2]["Host"] == f"127.0.0.1:{server.port}"


def test_an_empty_allow_list_denies_everything(runtime, fetch_wasm, server):
    g = guest(runtime, fetch_wasm, None)
    [denied] = run(g, f"GET http://127.0.0.1:{server.port}/api/hello\n\n")
    assert "is not in the allow-list (allow-list: (empty))" in denied
    assert server.seen == []


def test_redirects_are_followed_only_inside_the_list(runtime, fetch_wasm, server):
    base = f"http://127.0.0.1:{server.port}"
    g = guest(runtime, fetch_wasm, HttpGrant(allow=(f"{base}/api/*",)))
    inside, outside = run(g, f"GET {base}/api/redir-in\n\n", f"GET {base}/api/redir-out\n\n")
    assert inside == "200 2 hi"
    assert f"http request to '{base}/secret' is not in the allow-list" in outside
    assert [p for _, p, _, _ in server.seen] == ["/api/redir-in", "/api/hello", "/api/redir-out"]


def test_responses_are_capped(runtime, fetch_wasm, server):
    base = f"http://127.0.0.1:{server.port}"
    logs: list[str] = []
    g = guest(runtime, fetch_wasm, HttpGrant(allow=(f"{base}/api/*",), max_response=100_000), logs)
    big, chunked, hello = run(g, f"GET {base}/api/big\n\n", f"GET {base}/api/chunked\n\n",
                              f"GET {base}/api/hello\n\n")
    assert big == "error -2" and chunked == "error -2"
    assert hello == "200 2 hi"
    assert any("declares 200000 bytes, more than maxResponse 100000" in t for t in logs)
    assert any("/api/chunked' is larger than maxResponse 100000 bytes" in t for t in logs)


def test_time_spent_waiting_counts_toward_the_time_limit(runtime, fetch_wasm, server):
    base = f"http://127.0.0.1:{server.port}"
    logs: list[str] = []
    g = guest(runtime, fetch_wasm, HttpGrant(allow=(f"{base}/api/*",)), logs, timeout="300ms")
    [slow] = run(g, f"GET {base}/api/slow\n\n")
    # the request gave up when the call's budget ran out (the server has not answered yet:
    # it waits until released below), and the guest learned it
    assert slow == "error -3"
    assert any("/api/slow': the call's time budget ran out" in t for t in logs)
    assert not server.release.is_set()
    server.release.set()
    # the instance goes on with the next input
    assert run(g, f"GET {base}/api/hello\n\n") == ["200 2 hi"]


def test_names_resolving_to_private_addresses_need_consent(runtime, fetch_wasm, server):
    url = f"http://localhost:{server.port}/api/hello"
    g = guest(runtime, fetch_wasm, HttpGrant(allow=(f"http://localhost:{server.port}/api/*",)))
    [denied] = run(g, f"GET {url}\n\n")
    assert "'localhost' resolves to" in denied and "non-public address" in denied
    assert server.seen == []
    g = guest(runtime, fetch_wasm, HttpGrant(allow=(f"http://localhost:{server.port}/api/*",),
                                             private_networks=True))
    assert run(g, f"GET {url}\n\n") == ["200 2 hi"]


def test_malformed_requests_and_patterns_are_refused(runtime, fetch_wasm, server):
    g = guest(runtime, fetch_wasm, HttpGrant(allow=(f"http://127.0.0.1:{server.port}/*",)))
    bad_method, host_header = run(g, f"FETCH http://127.0.0.1:{server.port}/\n\n",
                                  f"GET http://127.0.0.1:{server.port}/\nHost: evil\n\n")
    assert "is not 'METHOD URL'" in bad_method
    assert "header 'Host' is set by the host" in host_header
    for bad in ("ftp://x/*", "http://exa mple.com/", "http://x:70000/"):
        with pytest.raises(ConfigError):
            HttpGrant(allow=(bad,))


def test_patterns_match_scheme_host_port_and_path():
    g = HttpGrant(allow=("https://*.example.com/v1/*", "http://10.0.0.5:*/", "https://api.test"))
    assert g.check("https://a.example.com/v1/x/y")[3].text == "https://*.example.com/v1/*"
    assert g.check("http://10.0.0.5:8080/")[2] == 8080
    assert g.check("https://API.test/anything")[1] == "api.test"
    for url in ("http://a.example.com/v1/x", "https://example.com/v1/x", "https://a.example.com/v2/",
                "https://a.example.com:8443/v1/x", "http://10.0.0.5:8080/x", "https://api.test:444/"):
        with pytest.raises(CapabilityDenied):
            g.check(url)


HTTP_DEPLOYMENT = """
apiVersion: iotwasm.io/v1
kind: Deployment
metadata: {name: fetch}
spec:
  module: m.wasm
  capabilities:
    host: [http]
    %s
"""


def test_deployments_grant_http_with_an_allow_list():
    from iotwasm.node.manifests import ManifestError, parse_documents

    [dep] = parse_documents(HTTP_DEPLOYMENT % 'http: {allow: ["https://api.example.com/v1/*"], '
                            'maxResponse: 64Ki, privateNetworks: true}', "d.yaml")
    caps = dep.capabilities()
    assert caps.allows("http")
    assert caps.http == HttpGrant(allow=("https://api.example.com/v1/*",), max_response=65536,
                                  private_networks=True)
    with pytest.raises(ManifestError, match="capability 'http' needs an allow-list"):
        parse_documents(HTTP_DEPLOYMENT % "", "d.yaml")
    with pytest.raises(ManifestError, match="is not scheme://host"):
        parse_documents(HTTP_DEPLOYMENT % 'http: {allow: ["ftp://x/"]}', "d.yaml")


def test_iotwasm_run_grants_http_with_its_allow_list(fetch_wasm, server):
    import sys

    base = f"http://127.0.0.1:{server.port}"
    lines = f"GET {base}/api/hello\nGET {base}/secret\n".encode()
    r = subprocess.run([sys.executable, "-m", "iotwasm.cli.main", "run", str(fetch_wasm),
                        "--http-allow", f"{base}/api/*"], input=lines, capture_output=True, timeout=120)
    assert r.stdout == b"200 2 hi\n"
    err = " ".join(r.stderr.decode().split())   # the terminal may wrap it
    assert f"line 2: http_fetch:iot_process: http request to '{base}/secret' is not in the allow-list " \
           f"(allow-list: {base}/api/*)" in err
    assert r.returncode == 3
    # without --http-allow the module cannot even start
    r = subprocess.run([sys.executable, "-m", "iotwasm.cli.main", "run", str(fetch_wasm)],
                       input=lines, capture_output=True, timeout=120)
    assert r.returncode == 1 and "needs capability 'http'" in " ".join(r.stderr.decode().split())


def test_https_verifies_the_certificate_of_the_name_asked_for(runtime, fetch_wasm, server, tmp_path, monkeypatch):
    import ssl

    from test_api_tls import self_signed

    cert, key = self_signed(tmp_path)   # for 127.0.0.1, signed by itself
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.httpd.socket = ctx.wrap_socket(server.httpd.socket, server_side=True)
    base = f"https://127.0.0.1:{server.port}"
    logs: list[str] = []
    g = guest(runtime, fetch_wasm, HttpGrant(allow=(f"{base}/api/*",)), logs)
    assert run(g, f"GET {base}/api/hello\n\n") == ["error -1"]    # not a trusted certificate
    assert any("CERTIFICATE_VERIFY_FAILED" in t for t in logs), logs
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))                  # now the node trusts it
    assert run(g, f"GET {base}/api/hello\n\n") == ["200 2 hi"]
