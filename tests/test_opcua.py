"""OPC UA source against an asyncua server the test starts on a free port: variables by node
id and by browse path, deadband, every change reported while connected, a server restarted
mid-run subscribed again, wrong credentials reported in one line."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from asyncua import Server, ua
from asyncua.crypto.permission_rules import User, UserRole

from iotwasm.node.manifests import ManifestError, parse_documents

from brokers import free_port
from nodesite import started, wait_for, write


class OnlyOperator:
    """Lets in the user `op` with password `pw`, no one else."""

    def get_user(self, iserver, username=None, password=None, certificate=None):
        return User(role=UserRole.User) if (username, password) == ("op", "pw") else None


class Plant:
    """An asyncua server with Plant/Temp (by browse path) and Plant/Level (ns=2;s=Level)."""

    def __init__(self, port: int | None = None, certs: Path | None = None):
        self.port = port or free_port()
        self.url = f"opc.tcp://127.0.0.1:{self.port}/plant/"
        self.certs = certs   # with certificates: only Basic256Sha256 SignAndEncrypt

    async def start(self, temp: float = 20.0, level: float = 0.0) -> None:
        self.server = Server(user_manager=OnlyOperator())
        await self.server.init()
        self.server.set_endpoint(self.url)
        if self.certs is not None:
            await self.server.load_certificate(str(self.certs / "server-cert.der"))
            await self.server.load_private_key(str(self.certs / "server-key.pem"))
            self.server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
        else:
            self.server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        self.server.set_identity_tokens([ua.UserNameIdentityToken])
        idx = await self.server.register_namespace("urn:iotwasm:test:plant")
        plant = await self.server.nodes.objects.add_object(idx, "Plant")
        self.temp = await plant.add_variable(idx, "Temp", temp)
        self.level = await plant.add_variable(ua.NodeId("Level", idx), "Level", level)
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()


def manifest(url: str, password_env: str = "IOTWASM_TEST_OPCUA_PW") -> str:
    return f"""
apiVersion: iotwasm.io/v1
kind: Route
metadata: {{name: ua}}
spec:
  source:
    opcua:
      url: "{url}"
      topic: "plant/{{node}}"
      samplingInterval: 20ms
      publishingInterval: 20ms
      timeout: 2s
      username: op
      passwordEnv: {password_env}
      nodes:
        - {{name: temp, path: "0:Objects/2:Plant/2:Temp", deadband: {{type: absolute, value: 1.0}}}}
        - {{name: level, id: "ns=2;s=Level"}}
  sinks: [{{store: {{table: changes}}}}]
"""


def values(node, name: str) -> list:
    rows = node.store.query("changes", limit=100_000)
    return [r["payload"]["value"] for r in reversed(rows) if r["payload"]["node"] == name]


@pytest.fixture(autouse=True)
def password():
    os.environ["IOTWASM_TEST_OPCUA_PW"] = "pw"
    os.environ["IOTWASM_TEST_OPCUA_WRONG"] = "guess"
    yield


def test_changes_arrive_with_deadband_and_after_a_server_restart(tmp_path: Path):
    mdir = tmp_path / "m"
    mdir.mkdir()

    async def main():
        plant = Plant()
        await plant.start()
        write(mdir, "ua.yaml", manifest(plant.url))
        node = await started(tmp_path, mdir)
        try:
            await wait_for(lambda: values(node, "level") == [0.0] and values(node, "temp") == [20.0],
                           what="the initial values")
            # each change is written once the previous one arrived: none is sampled away
            for i, v in enumerate([20.5, 22.0, 22.5, 24.0, 23.5, 25.0], 1):
                await plant.temp.write_value(v)
                await plant.level.write_value(float(i))
                await wait_for(lambda i=i: values(node, "level")[-1:] == [float(i)], what=f"level {i}")
            await wait_for(lambda: values(node, "temp")[-1:] == [25.0], what="temp 25.0")
            assert values(node, "level") == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
            # absolute deadband 1.0: a change within 1.0 of the last value is not reported
            assert values(node, "temp") == [20.0, 22.0, 24.0, 25.0]
            row = node.store.query("changes", limit=1)[0]
            assert row["topic"] == "plant/level" and row["payload"]["id"] == "ns=2;s=Level"
            assert row["payload"]["status"] == "Good" and isinstance(row["payload"]["source_ts"], int)
            src = node.routes["ua"].connectors()["source"]
            assert src["health"] == "ok" and src["counters"]["sessions"] == 1

            await plant.stop()
            await wait_for(lambda: node.routes["ua"].connectors()["source"]["health"] == "down",
                           what="the lost server reported")
            assert plant.url in node.routes["ua"].connectors()["source"]["problem"]
            await plant.start(temp=30.0, level=100.0)     # back, with new values
            await wait_for(lambda: values(node, "level")[-1:] == [100.0], timeout=30,
                           what="subscribed again: the current value")
            for v in (101.0, 102.0, 103.0):
                await plant.level.write_value(v)
                await wait_for(lambda v=v: values(node, "level")[-1:] == [v], what=f"level {v}")
            assert values(node, "level")[-4:] == [100.0, 101.0, 102.0, 103.0]
            assert values(node, "temp")[-1] == 30.0
            src = node.routes["ua"].connectors()["source"]
            assert src["health"] == "ok" and src["counters"]["sessions"] == 2 and src["problem"] is None
        finally:
            await node.shutdown()
            await plant.stop()

    asyncio.run(main())


def test_wrong_credentials_are_the_sources_problem(tmp_path: Path):
    mdir = tmp_path / "m"
    mdir.mkdir()

    async def main():
        plant = Plant()
        await plant.start()
        write(mdir, "ua.yaml", manifest(plant.url, password_env="IOTWASM_TEST_OPCUA_WRONG"))
        node = await started(tmp_path, mdir)
        try:
            await wait_for(lambda: node.routes["ua"].connectors()["source"]["problem"] is not None,
                           what="the refused login reported")
            problem = node.routes["ua"].connectors()["source"]["problem"]
            assert problem.startswith(plant.url) and "BadUserAccessDenied" in problem and "\n" not in problem
            assert node.store.count("changes") == 0
        finally:
            await node.shutdown()
            await plant.stop()

    asyncio.run(main())


def test_bad_configuration_is_one_line_naming_the_field():
    bad = manifest("opc.tcp://h:4840/").replace('id: "ns=2;s=Level"', 'id: "ns=2;s=Level", path: "0:Objects"')
    with pytest.raises(ManifestError) as e:
        parse_documents(bad, "ua.yaml")
    assert e.value.problems == ["ua.yaml#1 (Route ua) spec.source.opcua.nodes[1]: node level: give exactly one "
                                "of id, path"]
    with pytest.raises(ManifestError) as e:
        parse_documents(manifest("opc.tcp://op:pw@h:4840/"), "ua.yaml")
    assert e.value.problems == ["ua.yaml#1 (Route ua) spec.source.opcua.url: must not hold credentials (use "
                                "username and passwordEnv)"]


def test_a_secure_channel_with_the_nodes_certificate(tmp_path: Path):
    """A server that offers only Basic256Sha256 SignAndEncrypt: the source with a certificate
    gets its data; the same source without one is refused, and says so."""
    from asyncua.crypto.cert_gen import setup_self_signed_certificate
    from cryptography.x509.oid import ExtendedKeyUsageOID

    mdir = tmp_path / "m"
    mdir.mkdir()
    certs = tmp_path / "certs"
    certs.mkdir()

    async def main():
        for who, use in (("server", ExtendedKeyUsageOID.SERVER_AUTH), ("client", ExtendedKeyUsageOID.CLIENT_AUTH)):
            await setup_self_signed_certificate(certs / f"{who}-key.pem", certs / f"{who}-cert.der",
                                                f"urn:iotwasm:test:{who}", "127.0.0.1", [use], {"commonName": who})
        plant = Plant(certs=certs)
        await plant.start()
        secure = manifest(plant.url).replace("      nodes:", f"""      security:
        policy: Basic256Sha256
        mode: SignAndEncrypt
        certificate: {certs / 'client-cert.der'}
        privateKey: {certs / 'client-key.pem'}
        applicationUri: "urn:iotwasm:test:client"
      nodes:""")
        write(mdir, "ua.yaml", manifest(plant.url))
        node = await started(tmp_path, mdir)
        try:
            await wait_for(lambda: node.routes["ua"].connectors()["source"]["problem"] is not None,
                           what="the plain channel refused")
            assert node.store.count("changes") == 0
            problem = node.routes["ua"].connectors()["source"]["problem"]
            assert problem.startswith(plant.url) and "No matching endpoints" in problem and "#None" in problem
            write(mdir, "ua.yaml", secure)
            assert await node.sync() == []
            await wait_for(lambda: values(node, "level") == [0.0], timeout=30, what="values over the secure channel")
            assert node.routes["ua"].connectors()["source"]["health"] == "ok"
        finally:
            await node.shutdown()
            await plant.stop()

    asyncio.run(main())
