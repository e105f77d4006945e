"""Staged rollouts on real node processes: a canary that traps fails its gate and is rolled back
automatically; a healthy version goes canary → wave, can be paused and resumed."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import nats
import wasmtime

from iotwasm.engine.module import digest_of
from iotwasm.errors import IotwasmError
from iotwasm.fleet import FleetStore
from iotwasm.fleet.invoke import invoke

from brokers import stop_processes
from conftest import ECHO_WAT
from fleets import wait_for

CLI = [sys.executable, "-m", "iotwasm.cli.main"]
TRAPS = ECHO_WAT.replace("    local.get $in local.set $p\n", "    unreachable\n", 1)
HEALTHY = ECHO_WAT.replace("(i32.const 1024)", "(i32.const 4096)", 1)
assert TRAPS != ECHO_WAT and HEALTHY != ECHO_WAT
OBSERVE_S = 3   # each canary's gate


def manifest(module: str) -> str:
    return f"""deployment:
  apiVersion: iotwasm.io/v1
  kind: Deployment
  metadata: {{name: conv}}
  spec: {{module: {module}, resources: {{memory: 16Mi}}}}
placement: {{perNode: true}}
rollout:
  canary: 1
  waves: 1
  gate: {{observe: {OBSERVE_S}s, maxTrapRate: 0}}
  stageTimeout: 60s
"""


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, timeout=60, env={**os.environ, "COLUMNS": "200"})


def test_canary_failing_its_gate_is_rolled_back_and_a_good_version_rolls_out(nats_server, tmp_path):  # noqa: F811
    def up(name: str) -> subprocess.Popen:
        log = open(tmp_path / f"{name}.log", "wb")
        return subprocess.Popen([*CLI, "up", "--no-api", "--fleet", nats_server.url, "--name", name,
                                 "--data", str(tmp_path / name)],
                                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "200"})

    versions = {}
    for name, wat in (("v1", ECHO_WAT), ("v2", TRAPS), ("v3", HEALTHY)):
        (tmp_path / f"{name}.wat").write_text(wat)
        (tmp_path / f"{name}.yaml").write_text(manifest(f"{name}.wat"))
        versions[name] = digest_of(wasmtime.wat2wasm(wat))

    def apply(version: str) -> None:
        done = cli("fleet", "apply", str(tmp_path / f"{version}.yaml"), "--fleet", nats_server.url)
        assert done.returncode == 0, done.stderr.decode()

    async def main():
        procs = {n: up(n) for n in ("r1", "r2", "r3")}
        clog = open(tmp_path / "controller.log", "wb")
        procs["controller"] = subprocess.Popen([*CLI, "controller", "-v", "--fleet", nats_server.url],
                                               stdout=clog, stderr=subprocess.STDOUT)
        store = await FleetStore.connect(nats_server.url)
        nc = await nats.connect(nats_server.url)
        stop = asyncio.Event()

        async def traffic():   # calls spread over the replicas by the queue group
            while not stop.is_set():
                try:
                    await invoke(nc, "conv", b"reading", timeout=0.5, retries=0)
                except IotwasmError:
                    pass
                await asyncio.sleep(0.01)

        async def serving() -> dict[str, str | None]:
            return {n: info.health.get("conv", {}).get("digest") for n, (info, _) in (await store.nodes()).items()}

        async def all_on(version: str) -> bool:
            now = await serving()
            return len(now) == 3 and set(now.values()) == {versions[version]}

        async def record():
            got = await store.rollout("conv")
            return got[0] if got else None

        load = asyncio.create_task(traffic())
        try:
            apply("v1")
            await wait_for(lambda: all_on("v1"), timeout=60, what="v1 on three nodes")

            # a version that traps: only the canary gets it, the gate fails, it goes back
            apply("v2")

            async def finished():
                r = await record()
                return r if r is not None and r.revision > 1 and not r.active else None

            r = await wait_for(finished, timeout=90, what="the v2 rollout to finish")
            assert r.state == "rolled-back", (r.state, r.reason, r.events)
            assert len(r.failed) == 1 and r.updated == []
            canary = next(iter(r.failed))
            # by its trap rate, its own update gate, or the trapping container's error state,
            # whichever the controller saw first: each reason names the node and the traps
            assert canary in r.reason and "trap" in r.reason, r.reason
            assert sum("new version to" in text for _, text in r.events) == 1   # no wave started
            await wait_for(lambda: all_on("v1"), timeout=30, what="every node back on v1")
            status = cli("rollout", "status", "conv", "--fleet", nats_server.url, "-o", "json")
            assert json.loads(status.stdout)["conv"]["state"] == "rolled-back"
            table = cli("rollout", "status", "conv", "--fleet", nats_server.url)   # with its history
            assert table.returncode == 0, table.stderr.decode()
            assert b"rolled-back" in table.stdout and b"canary: new version to" in table.stdout

            # a healthy version: canary, pause holds it, resume lets it finish
            apply("v3")

            async def canary_serving():
                r = await record()
                return r is not None and r.target["spec"]["module"] == versions["v3"] and r.updated \
                    and r.state == "progressing"

            await wait_for(canary_serving, timeout=60, what="the v3 canary")
            # paused from here (a CLI process may take longer to start than the canary's gate on
            # a loaded machine); the CLI's pause is the same call, resume below goes through it
            paused = await store.control_rollout("conv", "pause")
            held = paused.updated
            # the pause is the disturbance: it holds past the moment the gate would have let
            # the wave start (its observation's end, plus a second for the controller's step)
            since = paused.observing_since or time.time()
            await asyncio.sleep(max(0.0, since + OBSERVE_S + 1.0 - time.time()))
            r = await record()
            assert r.state == "paused" and r.updated == held and len(held) < 3
            resumed = cli("rollout", "resume", "conv", "--fleet", nats_server.url)
            assert resumed.returncode == 0, resumed.stderr.decode()
            r = await wait_for(finished, timeout=90, what="the v3 rollout to finish")
            assert r.state == "succeeded", (r.reason, r.events)
            await wait_for(lambda: all_on("v3"), timeout=30, what="v3 on every node")
            again = cli("rollout", "resume", "conv", "--fleet", nats_server.url)
            assert again.returncode == 1 and b"only a paused one can be resumed" in again.stderr
            late = cli("rollout", "pause", "conv", "--fleet", nats_server.url)
            assert late.returncode == 1 and b"is succeeded; only a progressing one can be paused" in late.stderr
        finally:
            stop.set()
            await load
            await nc.close()
            await store.close()
            stop_processes(procs.values())

    asyncio.run(main())
