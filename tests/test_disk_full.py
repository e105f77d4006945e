"""A full disk under a running node: backpressure, never loss.

`iotwasm up` runs as its own process with its data directory on a small tmpfs
(tests/smallfs.py); numbered QoS 1 messages go through a real Mosquitto into a route with a
store-and-forward MQTT uplink (the SQLite outbox) and a local store sink. The disk is filled
to the last byte while messages keep coming and while the uplink acknowledges messages the
outbox then cannot delete; the test watches `/readyz` say why, frees the space, and counts
every message at the uplink: none lost, duplicates counted, the node never restarted.

(Its small publisher and collector belong with the other chaos scenarios' in one module
later; they are local here.)
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sqlite3
import urllib.error
import urllib.request
from pathlib import Path

from brokers import Mosquitto, free_port
from chaos import StatusWatch, until
from nodes import echo_route, echo_site, kill_up, mqtt_sink, stop_up, store_sink, up
from smallfs import SmallDisk, rows, truncate_wal

from iotwasm.message import Message
from iotwasm.messaging import open_bus

PAD = "x" * 1000   # ~1 KB a message: the held batches need real space


def message(seq: int) -> tuple[str, bytes]:
    return f"in/d{seq % 5}", json.dumps({"seq": seq, "pad": PAD}).encode()


class Collector:
    """Counts what reaches the uplink by seq; a persistent session, so the broker keeps what
    arrives while the collector itself reconnects."""

    def __init__(self, url: str):
        self.bus = open_bus(url, client_id=f"collector-{free_port()}")
        self.seen: dict[int, int] = {}

    async def start(self) -> None:
        await self.bus.connect(timeout=10)

        async def on(msg: Message) -> None:
            seq = json.loads(msg.payload)["seq"]
            self.seen[seq] = self.seen.get(seq, 0) + 1

        await self.bus.subscribe("up/#", on, qos=1)

    def lost(self, expected: range) -> list[int]:
        return [s for s in expected if s not in self.seen]

    def duplicates(self) -> int:
        return sum(n - 1 for n in self.seen.values())


async def publish(url: str, seqs: range) -> None:
    """A device publishing numbered QoS 1 messages, each acknowledged by its broker."""
    bus = open_bus(url)
    await bus.connect(timeout=10)
    try:
        batch = 100
        for start in range(seqs.start, seqs.stop, batch):
            window = [message(s) for s in range(start, min(start + batch, seqs.stop))]
            results = await (await bus.send_many(window, qos=1))
            assert all(r is None for r in results), results
    finally:
        await bus.close()


def readiness(port: int, data: Path | None = None) -> tuple[int, dict]:
    """`/readyz`; with the node's data directory, as its admin (who sees the reasons in full:
    an anonymous probe gets only generic words)."""
    headers = {"Authorization": f"Bearer {(data / 'admin.token').read_text().strip()}"} if data else {}
    try:
        req = urllib.request.Request(f"http://127.0.0.1:{port}/readyz", headers=headers)
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
    except OSError:
        return 0, {}


def describe_route(port: int, data: Path, name: str) -> dict:
    """`iotwasm describe route NAME`, as the CLI asks the API."""
    token = (data / "admin.token").read_text().strip()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/routes/{name}",
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


def test_a_full_disk_holds_messages_unacknowledged_and_loses_none(tmp_path, mosquitto):  # noqa: F811
    source = mosquitto
    uplink = Mosquitto(tmp_path / "uplink")
    uplink.start()
    disk = SmallDisk(tmp_path / "disk", "32m").mount()
    data = disk.path / "data"
    mdir = echo_site(tmp_path, echo_route("uplink", [
        mqtt_sink(uplink.url, "up/{device}", store_and_forward=True), store_sink("out")]))
    port = free_port()
    log_path = tmp_path / "node.log"
    node = up(mdir, data, source.url, name="edge1", api=f"127.0.0.1:{port}", log=log_path)
    outbox, store = data / "outbox.db", data / "store.db"
    a, b = range(1000), range(1000, 3000)
    everything = range(a.start, b.stop)
    seen_reasons: list[str] = []

    def reasons() -> list[str]:
        status, body = readiness(port, data)
        got = body.get("reasons", []) if status == 503 else []
        seen_reasons.extend(r for r in got if r not in seen_reasons)
        return got

    async def main():
        collector = Collector(uplink.url)
        await collector.start()
        status = StatusWatch(source.url, "edge1")
        await status.start()
        await until(lambda: readiness(port)[0] == 200, 60, "the node ready", node)

        # 1. the uplink goes away: A accumulates in the outbox (and in the store)
        uplink.stop()
        await publish(source.url, a)
        await until(lambda: rows(outbox, "SELECT count(*) FROM outbox") == len(a)
                    and rows(store, "SELECT count(*) FROM out") == len(a), 60, "A kept in the outbox", node)
        await until(lambda: truncate_wal(outbox), 30, "the outbox's WAL truncated")

        # 2. the disk fills up and B keeps coming: the route holds, /readyz says why
        disk.fill()
        publishing = asyncio.create_task(publish(source.url, b))
        await until(lambda: any(f"{outbox}: database or disk is full" in r for r in reasons()), 60,
                    "readiness naming the full outbox", node)
        assert "storage error" in readiness(port)[1]["reasons"]   # a probe learns only that much
        await publishing          # the source broker has all of B (acknowledged to the device)
        assert rows(store, "SELECT count(*) FROM out") < len(everything)
        held = (await asyncio.to_thread(describe_route, port, data, "uplink")).get("held", "")
        assert f"{outbox}: database or disk is full" in held
        await until(lambda: any(f"{outbox}: database or disk is full" in s for s in status.storage_seen), 30,
                    "the node's published status naming the full outbox", node)

        # 3. the uplink returns and acknowledges A, which the outbox cannot delete yet
        uplink.start()
        await until(lambda: any("forwarder" in r and "database or disk is full" in r for r in reasons()), 60,
                    "a failed delete reported", node)
        assert rows(outbox, "SELECT count(*) FROM outbox") >= len(a)   # nothing deleted, nothing lost

        # 4. space returns: everything goes through, no restart
        disk.free()
        await until(lambda: not collector.lost(everything), 120, "every message at the uplink", node)
        await until(lambda: readiness(port)[0] == 200, 60, "ready again", node)
        await until(lambda: rows(outbox, "SELECT count(*) FROM outbox") == 0, 60, "the outbox drained", node)
        assert rows(store, "SELECT count(*) FROM out") >= len(everything)
        stored = await asyncio.to_thread(lambda: sqlite3.connect(f"file:{store}?mode=ro", uri=True).execute(
            "SELECT payload FROM out").fetchall())
        assert {json.loads(p)["seq"] for (p,) in stored} == set(everything)
        assert "held" not in await asyncio.to_thread(describe_route, port, data, "uplink")
        dups = collector.duplicates()
        await collector.bus.close()
        await status.bus.close()
        return dups

    try:
        duplicates = asyncio.run(main())
        stop_up(node)
    finally:
        kill_up(node)
        uplink.kill()
        disk.unmount()
    log = log_path.read_text(errors="replace")
    print(f"disk full: 0 lost of {len(everything)}, {duplicates} duplicate(s) at the uplink "
          f"(at-least-once); readiness reasons seen: {seen_reasons}")
    assert any("route uplink" in r for r in seen_reasons), seen_reasons
    assert log.count("Traceback") == 0, log[-5000:]


def test_a_node_restarted_on_a_full_disk_starts_and_loses_none(tmp_path, mosquitto):  # noqa: F811
    """Stopped, then started again while its disk has not a byte left: the node releases its
    disk reserve, opens its databases, fills the room that gave it and holds the rest (more
    than the reserve holds), and stores everything once space returns."""
    source = mosquitto
    disk = SmallDisk(tmp_path / "disk", "16m").mount()
    data = disk.path / "data"
    mdir = echo_site(tmp_path, echo_route("local", [store_sink("out")]))
    port = free_port()
    log_path = tmp_path / "node.log"
    store, reserve = data / "store.db", data / ".disk-reserve"
    a, b = range(200), range(200, 3200)   # B: ~3 MB, the reserve 1 MiB

    def stored() -> set[int]:
        try:
            db = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5)
            try:
                return {json.loads(p)["seq"] for (p,) in db.execute("SELECT payload FROM out")}
            finally:
                db.close()
        except sqlite3.Error:
            return set()

    def start() -> subprocess.Popen:
        return up(mdir, data, source.url, name="edge1", api=f"127.0.0.1:{port}", log=log_path)

    node = start()
    try:
        async def before() -> None:
            await until(lambda: readiness(port)[0] == 200, 60, "the node ready", node)
            await until(lambda: reserve.exists() and reserve.stat().st_size >= 1 << 20, 30,
                        "the disk reserve made", node)
            await publish(source.url, a)
            await until(lambda: stored() == set(a), 60, "A stored", node)

        asyncio.run(before())
        stop_up(node)
        disk.fill()                        # not a byte left, the reserve still in place
        asyncio.run(publish(source.url, b))   # the broker keeps B for the node's session

        node = start()

        async def after() -> None:
            await until(lambda: "released the" in log_path.read_text(errors="replace"), 60,
                        "the reserve released", node)
            await until(lambda: any(f"{store}: database or disk is full" in r
                                    for r in readiness(port, data)[1].get("reasons", [])), 60,
                        "readiness naming the full store", node)
            assert len(stored()) < len(a) + len(b)
            disk.free()
            await until(lambda: stored() == set(a) | set(b), 120, "every message stored", node)
            await until(lambda: reserve.exists(), 60, "the disk reserve made again", node)

        asyncio.run(after())
        stop_up(node)
    finally:
        kill_up(node)
        disk.unmount()
    log = log_path.read_text(errors="replace")
    assert log.count("Traceback") == 0, log[-5000:]
