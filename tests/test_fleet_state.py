"""The fleet's desired state on a real nats-server with JetStream: concurrent writers resolved
by compare-and-set; modules refused when their bytes do not hash to their digest or lack a
trusted signature; a node that keeps its assignment while the fleet is down (across a
restart) and resyncs when it returns."""

from __future__ import annotations

import asyncio

import pytest
import wasmtime

from iotwasm.fleet import ArtifactError, ConflictError, Controller, FleetStore
from iotwasm.registry.signing import generate_key, key_id, load_private, load_public, sign_digest

from conftest import ECHO_WAT
from fleets import ECHO, Member, fleet_deployment, wait_for

OTHER = wasmtime.wat2wasm(ECHO_WAT.replace("(global $heap (mut i32) (i32.const 1024))",
                                           "(global $heap (mut i32) (i32.const 2048))"))


def test_concurrent_writers_are_resolved_by_compare_and_set(nats_server):  # noqa: F811
    async def main():
        stores = [await FleetStore.connect(nats_server.url) for _ in range(8)]
        try:
            base = fleet_deployment("shared", "sha256:" + "1" * 64, {"nodeSelector": {}})
            await stores[0].put_deployment(base, None)
            with pytest.raises(ConflictError, match="changed since revision none"):
                await stores[1].put_deployment(base, None)   # create twice: the second loses

            async def add_label(store: FleetStore, i: int) -> int:
                conflicts = 0
                while True:
                    fd, rev = await store.deployment("shared")
                    fd.placement.node_selector[f"w{i}"] = "yes"
                    try:
                        await store.put_deployment(fd, rev)
                        return conflicts
                    except ConflictError:
                        conflicts += 1

            conflicts = await asyncio.gather(*(add_label(s, i) for i, s in enumerate(stores)))
            fd, _ = await stores[0].deployment("shared")
            assert fd.placement.node_selector == {f"w{i}": "yes" for i in range(8)}   # no write lost
            assert sum(conflicts) > 0   # they did collide, and CAS resolved it
            # a stale revision is refused outright, for a write and for a delete
            with pytest.raises(ConflictError):
                await stores[0].put_deployment(fd, 1)
            with pytest.raises(ConflictError, match="changed since revision 1"):
                await stores[0].delete_deployment("shared", 1)
            assert await stores[0].deployment("shared") is not None
        finally:
            for s in stores:
                await s.close()

    asyncio.run(main())


def test_wrong_digest_and_unsigned_modules_are_refused(nats_server, tmp_path):  # noqa: F811
    async def main():
        ctl = Controller(nats_server.url, interval_s=0.2)
        await ctl.start()
        priv_pem, pub_pem = generate_key()
        pub = load_public(pub_pem)
        plain = await Member(tmp_path, "plain", nats_server.url, {"site": "a"}).start()
        strict = await Member(tmp_path, "strict", nats_server.url, {"site": "a"},
                              trusted={key_id(pub): pub}).start()
        try:
            good = await ctl.store.put_module(ECHO)
            forged = await ctl.store.put_module(OTHER)
            await ctl.store.put_object(forged, ECHO)   # the stored bytes do not match the name
            with pytest.raises(ArtifactError, match="hashes to"):
                await ctl.store.fetch_module(forged)
            await ctl.store.put_deployment(fleet_deployment("forged", forged, {"perNode": True}), None)
            await ctl.store.put_deployment(fleet_deployment("good", good, {"perNode": True}), None)
            await wait_for(lambda: "good" in plain.running(), what="good module on the plain node")
            for m in (plain, strict):
                await wait_for(lambda m=m: "forged" in m.agent.problems, what="refusal")
                assert "corrupt or tampered" in m.agent.problems["forged"]
                assert "forged" not in m.running()
                assert not any(r.digest == forged for r in m.node.registry.list())
            # the strict node wants a signature from a trusted key for the good module
            await wait_for(lambda: "good" in strict.agent.problems, what="unsigned refusal")
            assert "not signed" in strict.agent.problems["good"] and "good" not in strict.running()
            await ctl.store.put_signature(sign_digest(load_private(priv_pem), good))
            await wait_for(lambda: "good" in strict.running(), what="signed module runs")
            nodes = await ctl.store.nodes()
            assert any("forged" in p for p in nodes["strict"][0].problems)
        finally:
            for m in (plain, strict):
                await m.stop()
            await asyncio.wait_for(ctl.stop(), 10)

    asyncio.run(main())


def test_node_keeps_its_assignment_while_the_fleet_is_down_and_resyncs(nats_server, tmp_path):  # noqa: F811
    async def main():
        ctl = Controller(nats_server.url, interval_s=0.2)
        await ctl.start()
        m = await Member(tmp_path, "edge1", nats_server.url, {"site": "a"}).start()
        digest = await ctl.store.put_module(ECHO)
        await ctl.store.put_deployment(fleet_deployment("keep", digest, {"perNode": True}), None)
        await wait_for(lambda: "keep" in m.running(), what="first placement")
        await ctl.stop()
        nats_server.stop()
        await wait_for(lambda: not m.agent.connected, what="link down")
        await asyncio.sleep(3 * m.agent.heartbeat_s)   # the spell offline is the point: heartbeats fail
        assert "keep" in m.running()
        # a restart while the fleet is unreachable comes back with the same work
        await m.stop(leave=False)
        m = await Member(tmp_path, "edge1", nats_server.url, {"site": "a"}).start()
        try:
            await wait_for(lambda: "keep" in m.running(), what="work after restart offline")
            # the fleet returns with a changed desired state: the node picks it up
            nats_server.start()
            ctl = Controller(nats_server.url, interval_s=0.2)
            await ctl.start()
            await ctl.store.put_deployment(fleet_deployment("later", digest, {"perNode": True}), None)
            await ctl.store.delete_deployment("keep")
            await wait_for(lambda: m.running() == {"later"}, what="resync")
            await ctl.stop()
        finally:
            await m.stop()

    asyncio.run(main())


def test_a_written_assignment_is_read_at_once_not_at_the_next_resync(nats_server, tmp_path):  # noqa: F811
    """The agent reads its assignment key when something writes it (a core subscription to
    the key's subject), not only every `resync_every` heartbeats: here those re-reads never
    come after the first, so only the write can bring the change in."""
    async def main():
        ctl = Controller(nats_server.url, interval_s=0.2)
        await ctl.start()
        m = await Member(tmp_path, "edge1", nats_server.url, {"site": "a"}, resync_every=10**9).start()
        try:
            await wait_for(lambda: m.agent.connected and m.agent._follow_task is not None, what="following")
            digest = await ctl.store.put_module(ECHO)
            await ctl.store.put_deployment(fleet_deployment("first", digest, {"perNode": True}), None)
            await wait_for(lambda: m.running() == {"first"}, what="the first assignment")
            await ctl.store.put_deployment(fleet_deployment("second", digest, {"perNode": True}), None)
            await ctl.store.delete_deployment("first")
            await wait_for(lambda: m.running() == {"second"}, what="the changed assignment")
        finally:
            await m.stop()
            await ctl.stop()

    asyncio.run(main())


def test_an_assignment_written_while_the_agent_reads_the_key_is_read_again(nats_server, tmp_path):  # noqa: F811
    """A write whose notice lands while the agent is reading the key (after it took note of
    the writes before) must not wait for the next resync, which here never comes: the read
    returns the value from before that write, and the notice makes the agent read again.
    The controller is stopped first, so that nothing else writes the key meanwhile."""
    async def main():
        ctl = Controller(nats_server.url, interval_s=0.2)
        await ctl.start()
        m = await Member(tmp_path, "edge1", nats_server.url, {"site": "a"}, resync_every=10**9).start()
        writer = await FleetStore.connect(nats_server.url)
        try:
            await wait_for(lambda: m.agent.connected and m.agent._follow_task is not None, what="following")
            digest = await ctl.store.put_module(ECHO)
            for name in ("first", "second"):
                await ctl.store.put_deployment(fleet_deployment(name, digest, {"perNode": True}), None)
            await wait_for(lambda: m.running() == {"first", "second"}, what="both deployments")
            await ctl.stop()
            both, revision = await writer.assignment("edge1")
            first_only = {**both, "deployments": {"first": both["deployments"]["first"]}}
            store = m.agent.store
            read = store.assignment
            raced: list[int] = []

            async def read_while_written(node_id):
                got = await read(node_id)
                if not raced:
                    raced.append(got[1])
                    await writer.put_assignment("edge1", first_only, got[1])   # lands during the read
                    await wait_for(lambda: m.agent._reread, what="the write's notice during the read")
                return got

            store.assignment = read_while_written
            await writer.put_assignment("edge1", both, revision)   # the same, at a new revision: read
            await wait_for(lambda: m.running() == {"first"}, what="the assignment written during the read")
            assert raced and m.agent.applied_revision > raced[0]
        finally:
            await writer.close()
            await m.stop()
            await ctl.stop()

    asyncio.run(main())
