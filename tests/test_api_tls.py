"""The API over TLS: a node may listen beyond localhost only with TLS (or an explicit flag),
and then serves HTTPS that a client verifying the certificate accepts."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import threading
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from brokers import free_port
from iotwasm.api import ApiServer, ApiSettings
from iotwasm.errors import ConfigError
from iotwasm.node import Node, NodeConfig


def self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "iotwasm test node")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_listening_beyond_localhost_needs_tls_or_an_explicit_flag(tmp_path):
    with pytest.raises(ConfigError, match="without TLS"):
        ApiSettings("0.0.0.0:8282").check()
    with pytest.raises(ConfigError, match="without TLS"):
        ApiSettings("192.168.1.10:8282").check()
    with pytest.raises(ConfigError, match="both --tls-cert and --tls-key"):
        ApiSettings("0.0.0.0:8282", tls_cert=tmp_path / "c").check()
    ApiSettings("0.0.0.0:8282", allow_insecure=True).check()
    ApiSettings("0.0.0.0:8282", tmp_path / "c", tmp_path / "k").check()
    for host in ("127.0.0.1", "localhost", "[::1]", "127.0.0.5"):
        ApiSettings(f"{host}:8282").check()


def test_api_serves_https_with_the_given_certificate(tmp_path):
    cert, key = self_signed(tmp_path)
    port = free_port()
    ready, done = threading.Event(), threading.Event()
    box: dict = {}

    async def main():
        node = Node(NodeConfig(data_dir=tmp_path / "data", sync_interval_s=0.05))
        server = ApiServer(node, ApiSettings(f"127.0.0.1:{port}", cert, key))
        await server.start()
        await node.start()
        box["url"], box["token"] = server.url, server.admin_token_file.read_text().strip()
        ready.set()
        while not done.is_set():
            await asyncio.sleep(0.02)
        await server.stop()
        await node.shutdown()

    t = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    t.start()
    assert ready.wait(30)
    try:
        assert box["url"] == f"https://127.0.0.1:{port}"
        r = httpx.get(box["url"] + "/v1/node", headers={"Authorization": f"Bearer {box['token']}"},
                      verify=str(cert), timeout=10)
        assert r.status_code == 200 and r.json()["you"]["role"] == "admin"
        with pytest.raises(httpx.TransportError):  # plain HTTP is not answered as HTTP
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).raise_for_status()
    finally:
        done.set()
        t.join(30)


def test_a_second_api_on_a_taken_port_is_refused_and_the_first_keeps_serving(tmp_path):
    """Two nodes asking for one port: the second gets a one-line error it can survive (the
    node then runs without its API), not a process exit."""
    port = free_port()

    async def main():
        nodes, servers = [], []
        try:
            for i in range(2):
                node = Node(NodeConfig(data_dir=tmp_path / f"d{i}", manifests=None, name=f"n{i}"))
                await node.start()
                nodes.append(node)
                server = ApiServer(node, ApiSettings(f"127.0.0.1:{port}"))
                servers.append(server)
                if i == 0:
                    await server.start()
                else:
                    with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
                        await server.start()
                    await server.stop(keep_policy=True)
            async with httpx.AsyncClient() as client:
                r = await client.get(f"http://127.0.0.1:{port}/healthz")
            assert r.status_code == 200
            assert nodes[1].ready  # the loop of the second node is alive
        finally:
            for s in servers:
                await s.stop()
            for n in nodes:
                await n.shutdown()

    asyncio.run(main())
