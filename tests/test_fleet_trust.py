"""Trusted keys on the command line: three `iotwasm up --fleet … --trust-key FILE` nodes load only fleet
modules signed by one of those keys. Keys and signatures come from the CLI's own `keygen` and
`sign`; `fleet apply` uploads a module's signature along with it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import wasmtime
import yaml

from brokers import stop_processes
from conftest import ECHO_WAT
from iotwasm.fleet import Controller, FleetDeployment, FleetStore

CLI = [sys.executable, "-m", "iotwasm.cli.main"]


def variant(heap: int) -> bytes:
    """The echo module with another digest (same behaviour)."""
    return wasmtime.wat2wasm(ECHO_WAT.replace("(global $heap (mut i32) (i32.const 1024))",
                                              f"(global $heap (mut i32) (i32.const {heap}))"))


def cli(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, f"{args}: {done.stderr}{done.stdout}"
    return done


def test_nodes_with_trusted_keys_run_only_signed_fleet_modules_and_refuse_forged_ones(nats_server, tmp_path):  # noqa: F811
    cli("keygen", "--out", str(tmp_path / "ops"))
    cli("keygen", "--out", str(tmp_path / "stranger"))
    for name, heap, key in (("unsigned", 1024, None), ("signed", 2048, "ops"), ("foreign", 3072, "stranger")):
        (tmp_path / f"{name}.wasm").write_bytes(variant(heap))
        if key:
            cli("sign", str(tmp_path / f"{name}.wasm"), "--key", str(tmp_path / f"{key}.key"))
        (tmp_path / f"{name}.yaml").write_text(
            f"deployment:\n  apiVersion: iotwasm.io/v1\n  kind: Deployment\n  metadata: {{name: {name}}}\n"
            f"  spec: {{module: {name}.wasm, resources: {{memory: 16Mi}}}}\nplacement: {{perNode: true}}\n")
    names = ("strict-1", "strict-2", "strict-3")
    nodes = [subprocess.Popen([*CLI, "up", "--no-api", "--fleet", nats_server.url, "--name", n,
                               "--data", str(tmp_path / n), "--trust-key", str(tmp_path / "ops.pub")],
                              stdout=open(tmp_path / f"{n}.log", "wb"), stderr=subprocess.STDOUT)
             for n in names]

    async def main():
        ctl = Controller(nats_server.url, interval_s=0.2)
        await ctl.start()
        store = await FleetStore.connect(nats_server.url)
        try:
            for name in ("unsigned", "signed", "foreign"):
                out = cli("fleet", "apply", str(tmp_path / f"{name}.yaml"), "--fleet", nats_server.url).stdout
                assert f"fleet deployment {name} at revision" in out
            # an artifact whose stored bytes are not the ones its digest names
            forged = await store.put_module(variant(4096))
            await store.put_object(forged, variant(1024))
            doc = yaml.safe_load((tmp_path / "signed.yaml").read_text())
            doc["deployment"]["metadata"]["name"] = "forged"
            doc["deployment"]["spec"]["module"] = forged
            await store.put_deployment(FleetDeployment.parse(doc), None)

            def settled(info) -> bool:
                return info is not None and info.running == ["signed"] and len(info.problems) == 3

            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                listing = await store.nodes()
                if all(settled(listing.get(n, (None, 0))[0]) for n in names):
                    break
                await asyncio.sleep(0.2)
            else:
                raise AssertionError(f"nodes did not settle: {listing}")
            for n in names:      # every node refuses all three, each for its own reason
                problems = dict(p.split(": ", 1) for p in listing[n][0].problems)
                assert "is not signed and signatures are required" in problems["unsigned"], n
                assert "which is not trusted here" in problems["foreign"], n
                assert "corrupt or tampered artifact" in problems["forged"], n
        finally:
            await store.close()
            await asyncio.wait_for(ctl.stop(), 10)

    try:
        asyncio.run(main())
    finally:
        stop_processes(nodes)


def test_trust_key_problems_stop_the_node_before_it_starts(tmp_path):
    (tmp_path / "bogus.pub").write_text("not a key\n")
    base = [*CLI, "up", "--no-api", "--data", str(tmp_path / "d")]
    done = subprocess.run([*base, "--fleet", "nats://127.0.0.1:1", "--trust-key", str(tmp_path / "bogus.pub")],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "300"})
    assert done.returncode == 1 and f"--trust-key {tmp_path / 'bogus.pub'}: not a PEM public key" in done.stderr
    done = subprocess.run([*base, "--fleet", "nats://127.0.0.1:1", "--trust-key", str(tmp_path / "missing.pub")],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "300"})
    assert done.returncode == 1 and "missing.pub: cannot read" in done.stderr
    done = subprocess.run([*base, str(tmp_path), "--trust-key", str(tmp_path / "bogus.pub")],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "300"})
    assert done.returncode == 1 and "give --fleet too" in done.stderr
