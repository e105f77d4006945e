"""Placement and failover on a real nats-server with JetStream: deployments placed by labels
and a dead node's work bound elsewhere (in this process, and with real `iotwasm up --fleet`
and `iotwasm controller` processes, one of them killed); a hung server that costs no node its
work, and the liveness rule behind it on its own; fleet pipelines (a bundled route,
examples/fleet/decode.yaml) that run where they are placed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path

import pytest

from iotwasm.errors import ConfigError
from iotwasm.fleet import Controller, FleetDeployment, FleetStore, NodeInfo

from brokers import stop_processes
from conftest import ECHO_WAT
from fleets import ECHO, Member, fleet_deployment, wait_for


@contextlib.asynccontextmanager
async def running_fleet(root: Path, url: str, nodes: list[tuple[str, dict]], **controller):
    """An in-process controller and Members ((name, labels) each), all stopped again at the end."""
    ctl = Controller(url, **{"dead_after_s": 1.5, "interval_s": 0.2, **controller})
    await ctl.start()
    members: list[Member] = []
    try:
        for name, labels in nodes:
            members.append(await Member(root, name, url, labels).start())
        yield ctl, members
    finally:
        for m in members:
            await m.stop()
        await asyncio.wait_for(ctl.stop(), 10)


# -- against nats-server -------------------------------------------------------------------------
def test_placement_by_labels_and_failover_of_a_dead_node(nats_server, tmp_path):  # noqa: F811
    async def main():
        async with running_fleet(tmp_path, nats_server.url, [("n1", {"site": "a", "gpio": "true"}), ("n2", {"site": "a"}),
                                                           ("n3", {"site": "b"})]) as (ctl, members):
            digest = await ctl.store.put_module(ECHO)
            await ctl.store.put_deployment(fleet_deployment("edge", digest, {"nodeSelector": {"site": "a"},
                                                                             "perNode": True}), None)
            await ctl.store.put_deployment(fleet_deployment("gpio", digest, {"nodeSelector": {"gpio": "true"}}), None)
            await ctl.store.put_deployment(fleet_deployment("one", digest, {"replicas": 1}), None)
            await wait_for(lambda: members[0].running() >= {"edge", "gpio"} and "edge" in members[1].running(),
                           what="placement on site a")
            await wait_for(lambda: sum("one" in m.running() for m in members) == 1, what="single copy")
            assert "edge" not in members[2].running() and "gpio" not in members[2].running()
            assert "gpio" not in members[1].running()
            # the node listing shows labels and what each node runs
            listing = await ctl.store.nodes()
            assert listing["n1"][0].labels == {"site": "a", "gpio": "true"}
            assert set(listing["n1"][0].running) >= {"edge", "gpio"}

            # the node holding "one" dies without leaving: its copy is bound elsewhere
            holder = next(m for m in members if "one" in m.running())
            await holder.agent.stop(leave=False)  # heartbeats stop, as when the process is killed
            await wait_for(lambda: any("one" in m.running() for m in members if m is not holder),
                           what="rebind of 'one'")
            await holder.stop(leave=False)
            members.remove(holder)

    asyncio.run(main())


def test_messages_flow_through_a_fleet_pipeline_on_the_nodes_it_is_placed_on(nats_server, tmp_path):  # noqa: F811
    """A fleet deployment with a bundled route: every matching node runs the pipeline; nodes it
    leaves drop the route with the deployment."""
    route = {"apiVersion": "iotwasm.io/v1", "kind": "Route", "metadata": {"name": "readings"},
             "spec": {"source": {"bus": {"topic": "in/{device}"}}, "steps": ["conv"],
                      "sinks": [{"store": {"table": "out"}}]}}

    async def main():
        async with running_fleet(tmp_path, nats_server.url, [("f1", {"site": "a"}), ("f2", {"site": "a"}),
                                                           ("f3", {"site": "b"})]) as (ctl, members):
            digest = await ctl.store.put_module(ECHO)
            doc = json.loads(fleet_deployment("conv", digest, {"nodeSelector": {"site": "a"}, "perNode": True}).to_json())
            doc["deployment"]["spec"]["capabilities"] = {"topics": {"subscribe": ["in/#"], "publish": ["in/#"]}}
            fd = FleetDeployment.parse({**doc, "routes": [route]})
            rev = await ctl.store.put_deployment(fd, None)
            a_nodes = members[:2]
            await wait_for(lambda: all("readings" in m.node.routes for m in a_nodes), what="the route on site a")
            assert "readings" not in members[2].node.routes and "conv" not in members[2].running()
            for m in a_nodes:
                for i in range(5):
                    await m.node.bus.publish(f"in/d{i}", f"{m.node.config.name}-{i}".encode(), qos=1)
            for m in a_nodes:
                name = m.node.config.name
                await wait_for(lambda m=m: len(m.node.store.query("out", limit=50)) == 5, what=f"5 rows on {name}")
                assert sorted(r["payload"] for r in m.node.store.query("out", limit=50)) == \
                    [f"{name}-{i}" for i in range(5)]
            # narrowed to one node: the other drops route and deployment together
            narrowed = FleetDeployment.parse({**json.loads(fd.to_json()),
                                              "placement": {"nodeSelector": {"site": "a"}, "replicas": 1}})
            await ctl.store.put_deployment(narrowed, rev)
            await wait_for(lambda: sum("readings" in m.node.routes for m in a_nodes) == 1, what="one route left")
            left = next(m for m in a_nodes if "readings" not in m.node.routes)
            await wait_for(lambda: "conv" not in left.running(), what="deployment removed with its route")
            with pytest.raises(ConfigError, match="routes: names must be unique"):
                FleetDeployment.parse({**json.loads(fd.to_json()), "routes": [route, route]})

    asyncio.run(main())


def test_a_controller_that_sees_no_heartbeat_at_all_keeps_the_work_where_it_is(nats_server, tmp_path):  # noqa: F811
    """A hung server stops every heartbeat at once, for longer than dead-after: the controller
    must not strip every node of its work when the server answers again."""
    async def main():
        async with running_fleet(tmp_path, nats_server.url, [(n, {"site": "a"}) for n in ("h1", "h2", "h3")],
                                 dead_after_s=1.0) as (ctl, members):
            digest = await ctl.store.put_module(ECHO)
            await ctl.store.put_deployment(fleet_deployment("steady", digest, {"perNode": True}), None)
            await ctl.store.put_deployment(fleet_deployment("single", digest, {"replicas": 1}), None)
            await wait_for(lambda: all("steady" in m.running() for m in members)
                           and sum("single" in m.running() for m in members) == 1, what="placement")
            holder = next(m for m in members if "single" in m.running())
            lost: list[str] = []

            async def watch():
                while True:
                    lost.extend(f"{m.node.config.name} lost {name}" for m in members
                                for name in ("steady",) if name not in m.running())
                    if "single" not in holder.running():
                        lost.append("single moved")
                    await asyncio.sleep(0.05)

            watcher = asyncio.create_task(watch())
            before = {n: rev for n, (_, rev) in (await ctl.store.nodes()).items()}
            await asyncio.to_thread(nats_server.pause)
            try:
                # the hang is the disturbance: twice dead-after (four times blind-after) without
                # any heartbeat; heartbeats every 0.3 s keep a shorter dead-after from being safe
                await asyncio.sleep(2 * ctl.dead_after_s)
            finally:
                nats_server.resume()

            async def beat_again() -> bool:   # heartbeats return, one node after another
                now = await ctl.store.nodes()
                return all(n in now and now[n][1] > rev for n, rev in before.items())

            for _ in range(2):   # the revisions count writes to the whole bucket: two rounds
                await wait_for(beat_again, what="a heartbeat of every node after the hang")
                before = {n: rev for n, (_, rev) in (await ctl.store.nodes()).items()}
            checks = ctl.checks                     # a pass begun on what came before has finished
            await wait_for(lambda: ctl.checks >= checks + 2, what="two liveness checks after that")

            async def applied() -> bool:            # whatever it wrote, the nodes have acted on
                for m in members:
                    _, rev = await ctl.store.assignment(m.node.config.name)
                    if m.agent.applied_revision != rev:
                        return False
                return True

            await wait_for(applied, what="the nodes caught up with their assignments")
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            assert lost == []
            assert set(ctl.live()) == {"h1", "h2", "h3"}

    asyncio.run(main())


def test_time_in_which_the_controller_hears_nobody_does_not_count_against_nodes():
    """The liveness rule on its own (dead-after 1 s, blind after 0.5 s of silence from everyone)."""
    ctl = Controller("nats://127.0.0.1:1", dead_after_s=1.0)
    t0 = time.monotonic()
    ctl._nodes = {n: NodeInfo(n) for n in ("a", "b", "c")}
    ctl._last_heard = t0 - 5                      # nobody heard from for 5 s …
    ctl._seen = {"a": (1, t0 - 5.2), "b": (1, t0 - 5.4), "c": (1, t0 - 7)}   # … c was silent before
    assert set(ctl.live()) == {"a", "b"}          # judged at the last moment anyone was heard
    ctl._heard(t0)                                # a's heartbeat arrives first: 4.5 s were blind
    ctl._seen["a"] = (2, t0)
    assert set(ctl.live()) == {"a", "b"}          # b: 0.9 s of seeing time since its heartbeat
    ctl._seen["b"] = (1, time.monotonic() - 1.5)  # b stays silent while others are heard
    ctl._heard(time.monotonic())
    assert set(ctl.live()) == {"a"}


def test_three_node_processes_one_killed_its_work_rebound(nats_server, tmp_path):  # noqa: F811
    """Real `iotwasm up --fleet` processes and an `iotwasm controller` process; SIGKILL leaves
    the killed node no chance to say goodbye."""
    import os
    import signal
    import subprocess
    import sys

    def up(name: str, site: str) -> subprocess.Popen:
        log = open(tmp_path / f"{name}.log", "wb")
        return subprocess.Popen([sys.executable, "-m", "iotwasm.cli.main", "up", "--no-api", "--fleet",
                                 nats_server.url, "--name", name, "--data", str(tmp_path / name),
                                 "--label", f"site={site}", "--label", "arch=x86_64"],
                                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "200"})

    async def main():
        procs = {n: up(n, s) for n, s in [("p1", "a"), ("p2", "a"), ("p3", "b")]}
        clog = open(tmp_path / "controller.log", "wb")
        procs["controller"] = subprocess.Popen([sys.executable, "-m", "iotwasm.cli.main", "controller", "-v",
                                                "--fleet", nats_server.url], stdout=clog, stderr=subprocess.STDOUT)
        store = await FleetStore.connect(nats_server.url)
        try:
            digest = await store.put_module(ECHO)
            await store.put_deployment(fleet_deployment("one", digest, {"nodeSelector": {"site": "a"}}), None)
            (tmp_path / "echo.wat").write_text(ECHO_WAT)
            (tmp_path / "all.yaml").write_text(
                "deployment:\n  apiVersion: iotwasm.io/v1\n  kind: Deployment\n  metadata: {name: all}\n"
                "  spec: {module: echo.wat, resources: {memory: 16Mi}}\nplacement: {perNode: true}\n")
            cli = [sys.executable, "-m", "iotwasm.cli.main"]
            done = subprocess.run([*cli, "fleet", "apply", str(tmp_path / "all.yaml"), "--fleet", nats_server.url],
                                  capture_output=True, timeout=60)
            assert done.returncode == 0, done.stderr.decode()
            assert b"fleet deployment all at revision" in done.stdout

            async def running():
                return {n: set(info.running) for n, (info, _) in (await store.nodes()).items()}

            try:
                await wait_for(lambda: _placed(running), timeout=40, what="placement on three processes")
            except AssertionError as e:   # say what the fleet looked like, and what the controller did
                nodes = {k: (v[0].running, v[0].problems) for k, v in (await store.nodes()).items()}
                assigned = {k: sorted(v[0].get("deployments", {})) for k, v in (await store.assignments()).items()}
                raise AssertionError(f"{e}; nodes {nodes}; assignments {assigned}; controller log:\n"
                                     + (tmp_path / "controller.log").read_text(errors="replace")[-3000:]) from None
            now = await running()
            assert "one" not in now["p3"] and sum("one" in v for v in now.values()) == 1
            holder = next(n for n, v in now.items() if "one" in v)
            other = ({"p1", "p2"} - {holder}).pop()
            procs[holder].send_signal(signal.SIGKILL)
            procs[holder].wait(10)

            async def rebound():
                return "one" in (await running()).get(other, set())

            await wait_for(rebound, timeout=30, what="rebind after SIGKILL")
            assert "one" not in (await running())["p3"]   # labels still respected
            listed = subprocess.run([*cli, "nodes", "--fleet", nats_server.url, "-o", "json"],
                                    capture_output=True, timeout=60)
            rows = {r["id"]: r for r in json.loads(listed.stdout)}
            assert rows[other]["labels"] == {"site": "a", "arch": "x86_64"}
            assert "one" in rows[other]["assigned"] and "all" in rows["p3"]["assigned"]
            gone = subprocess.run([*cli, "fleet", "delete", "all", "--fleet", nats_server.url],
                                  capture_output=True, timeout=60)
            assert gone.returncode == 0 and b"fleet deployment all (revision" in gone.stdout, gone.stderr
            again = subprocess.run([*cli, "fleet", "delete", "all", "--fleet", nats_server.url],
                                   capture_output=True, timeout=60)
            assert again.returncode == 1 and b"fleet deployment all: not found" in again.stderr

            async def unbound():
                return all("all" not in v for v in (await running()).values())

            await wait_for(unbound, timeout=30, what="'all' removed from every node")
        finally:
            await store.close()
            stop_processes(procs.values())

    asyncio.run(main())


async def _placed(running) -> bool:
    now = await running()
    return len(now) == 3 and all("all" in v for v in now.values()) and sum("one" in v for v in now.values()) == 1


def test_the_example_fleet_pipeline_applies_and_runs_where_it_is_placed(nats_server, tmp_path):  # noqa: F811
    """examples/fleet/decode.yaml through `iotwasm fleet apply`: the module is uploaded, the
    gateways of site berlin decode frames into their store, others run nothing."""
    import subprocess
    import sys

    example = Path(__file__).resolve().parent.parent / "examples" / "fleet" / "decode.yaml"

    async def main():
        async with running_fleet(tmp_path, nats_server.url,
                                 [("berlin-1", {"site": "berlin"}), ("paris-1", {"site": "paris"})]) as (ctl, members):
            done = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "iotwasm.cli.main", "fleet",
                                           "apply", str(example), "--fleet", nats_server.url],
                                           capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
            fd, _ = await ctl.store.deployment("decode")
            assert fd.rollout is not None and fd.rollout.waves == 2 and fd.routes[0].name == "frames"
            berlin, paris = members
            await wait_for(lambda: len(berlin.node.store.query("readings", limit=5)) >= 3, timeout=40,
                           what="decoded readings on the berlin gateway")
            row = berlin.node.store.query("readings", limit=1)[0]
            assert row["topic"].startswith("sensors/") and row["topic"].endswith("/temperature")
            assert "decode" not in paris.running() and "frames" not in paris.node.routes

    asyncio.run(main())
