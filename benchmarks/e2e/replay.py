#!/usr/bin/env python3
"""The e2e route replayed inside one process: the node's own CPU per message, with little noise.

    .venv/bin/python benchmarks/e2e/replay.py [--baseline OTHER/src] [--rate 5000] [--per-read 5]

`run.py` measures a node through a real broker against a paced load generator: the truth, but
on a 2-core VM its CPU per message moves by ±10–20 % between runs, more than most changes
to the node's own code. Here a node runs the same deployments and route (durable default) in
this process, connected to its own mosquitto, and once it is up its MQTT connection's
transport is replaced by a replay: the PUBLISHes of the load generator's workload are handed
to the connection `--per-read` at a time at `--rate` messages a second, as the kernel would
hand them to a read, and every QoS 1 PUBLISH the node writes is answered with its PUBACK on
the next pass of the loop, as a broker's would come back. What is measured is the process's
CPU time (all its threads) from the first message to the last output, divided by the
messages: the node's work without the broker, the load generator, the sockets and the
kernel's part of the network. It compares two versions of the node (`--baseline`, run
alternately in child processes); `run.py` stays the measure against other systems.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import MODULES, PROCS  # noqa: E402
from loadgen import PAYLOAD, celsius, expected_passing  # noqa: E402
from profiler import thread_cpu  # noqa: E402
from systems import ROUTE, write_deployments  # noqa: E402


class Replay:
    """Stands in for the transport of the node's broker connection: takes what the node
    writes, answers its QoS 1 PUBLISHes with PUBACKs a pass of the loop later, and counts
    outputs and the acknowledgements of inputs."""

    def __init__(self, conn, codec) -> None:
        self.conn, self.codec = conn, codec
        self.decoder = codec.Decoder(1 << 24)
        self.loop = asyncio.get_running_loop()
        self.outputs = 0
        self.inputs_acked = 0
        self.pending: list[int] = []
        self.done = asyncio.Event()
        #: (outputs, input acknowledgements) that end a phase
        self.want: tuple[int, int] = (1 << 62, 0)
        #: the measurement is over: the node's shutdown may close the connection
        self.ending = False

    def write(self, data: bytes) -> None:
        codec = self.codec
        for ptype, flags, body in self.decoder.feed(bytes(data)):
            if ptype == codec.PUBLISH:
                topic, qos, mid, _ = codec.parse_publish(flags, body)
                if topic.startswith(b"out/"):   # not the node's own status
                    self.outputs += 1
                if qos:
                    self.pending.append(mid)
            elif ptype == codec.PUBACK:
                self.inputs_acked += 1
        if self.pending:
            self.loop.call_soon(self._answer)
        if self.outputs >= self.want[0] and self.inputs_acked >= self.want[1]:
            self.done.set()

    def _answer(self) -> None:
        if self.pending:
            acks = b"".join(self.codec.puback(m) for m in self.pending)
            self.pending = []
            self.conn.data_received(acks)

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default=None):
        return default

    def abort(self) -> None:
        if not self.ending:
            raise RuntimeError("the node dropped the replayed connection")

    close = abort


def _threads_cpu() -> dict[str, float]:
    """CPU seconds of this process's threads, summed by Python thread name."""
    import threading

    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for tid, cpu in thread_cpu(os.getpid()).items():
        name = names.get(tid, "native thread")
        out[name] = out.get(name, 0.0) + cpu
    return out


def _chunks(codec, n: int, per_read: int) -> list[bytes]:
    """The load generator's n QoS 1 PUBLISHes (100 devices, its payloads), per_read a read."""
    packets = [codec.publish(f"in/dev-{seq % 100:04d}".encode(),
                             (PAYLOAD % (seq % 100, repr(celsius(seq)), seq, 0)).encode(),
                             1, False, seq % 65535 + 1)
               for seq in range(n)]
    return [b"".join(packets[i:i + per_read]) for i in range(0, n, per_read)]


async def _measure(broker_url: str, work: Path, n: int, rate: float, per_read: int,
                   linger: str | None) -> dict:
    from iotwasm.messaging import mqtt_codec as codec
    from iotwasm.node.node import Node, NodeConfig

    mdir = work / "manifests"
    mdir.mkdir(parents=True)
    write_deployments(mdir, MODULES / "unit_convert.wasm")
    route = ROUTE.format(saf="true")
    if linger is not None:
        route += f"  batch: {{maxLinger: {linger}}}\n"
    (mdir / "routes.yaml").write_text(route)
    node = Node(NodeConfig(data_dir=work / "data", manifests=mdir, broker=broker_url, name="replay",
                           http="127.0.0.1:0"))
    await node.start()
    try:
        from iotwasm.cli.heap import freeze_heap
        freeze_heap()   # as `iotwasm up` does once its node is built
        conn = node.bus._conn
        conn.gathering, conn._quickack = None, None
        replay = Replay(conn, codec)
        conn.transport = replay
        chunks = _chunks(codec, n + 2000, per_read)
        warm, chunks = chunks[: 2000 // per_read], chunks[2000 // per_read:]
        loop = asyncio.get_running_loop()
        # warm up: the instances made, the outbox's first pages, the lanes' backoff settled
        replay.want = (expected_passing(0, 1999), 2000)
        for c in warm:
            conn.data_received(c)
            await asyncio.sleep(per_read / rate)
        await asyncio.wait_for(replay.done.wait(), 30)
        replay.done.clear()
        replay.want = (expected_passing(0, n + 1999), n + 2000)
        t0 = _threads_cpu()
        runner = node.routes["e2e"].runner
        b0 = runner.stats.batches
        prof = None
        if os.environ.get("REPLAY_PROFILE"):   # cProfile of the loop's thread, to that file
            import cProfile
            prof = cProfile.Profile()
            prof.enable()
        g0 = [g["collections"] for g in gc.get_stats()]
        c0, w0 = time.process_time(), loop.time()
        for i, c in enumerate(chunks):
            delay = w0 + (i + 1) * per_read / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            conn.data_received(c)
        await asyncio.wait_for(replay.done.wait(), 60)
        cpu, wall = time.process_time() - c0, loop.time() - w0
        collections = [g["collections"] - before for g, before in zip(gc.get_stats(), g0)]
        if prof is not None:
            prof.disable()
            prof.dump_stats(os.environ["REPLAY_PROFILE"])
        t1 = _threads_cpu()
        threads = {k: round((v - t0.get(k, 0.0)) / n * 1e6, 1) for k, v in t1.items()
                   if v - t0.get(k, 0.0) > 0}
        batches = runner.stats.batches - b0
        return {"cpu_us_per_msg": round(cpu / n * 1e6, 2), "seconds": round(wall, 2),
                "batch": round(n / max(batches, 1), 1), "collections": collections,
                "offered_per_s": round(n / wall), "outputs": replay.outputs, "threads": threads}
    finally:
        transport = getattr(node.bus._conn, "transport", None)
        if isinstance(transport, Replay):
            transport.ending = True
        await node.shutdown()


def child(args: argparse.Namespace) -> None:
    sys.path.insert(0, args.src)
    broker = PROCS.broker(Path(args.work) / "broker")
    try:
        res = asyncio.run(_measure(f"mqtt://127.0.0.1:{broker.port}", Path(args.work), args.messages,
                                   args.rate, args.per_read, args.linger))
    finally:
        broker.kill()
    print(json.dumps(res), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", help="another checkout's src directory, run alternately")
    ap.add_argument("--rate", type=float, default=5000, help="messages a second (default 5000)")
    ap.add_argument("--per-read", type=int, default=5, help="messages per read (default 5)")
    ap.add_argument("--messages", type=int, default=40000)
    ap.add_argument("--linger", help="the route's batch.maxLinger (default: the route's default, 2ms)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--src", default=str(HERE.parent.parent / "src"), help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    versions = [("this checkout", str(HERE.parent.parent / "src"))]
    if args.baseline:
        versions.append(("baseline", str(Path(args.baseline).resolve())))
    got: dict[str, list[float]] = {name: [] for name, _ in versions}
    print(f"replay: {args.messages:,} messages at {args.rate:,.0f}/s, {args.per_read} per read, "
          f"{args.rounds} rounds", flush=True)
    for r in range(args.rounds):
        order = versions if r % 2 == 0 else versions[::-1]
        for name, src in order:
            with tempfile.TemporaryDirectory(prefix="replay-") as work:
                env = {**os.environ, "PYTHONPATH": src}
                out = subprocess.run([sys.executable, __file__, "--child", "--src", src, "--work", work,
                                      "--rate", str(args.rate), "--per-read", str(args.per_read),
                                      "--messages", str(args.messages),
                                      *(["--linger", args.linger] if args.linger else [])],
                                     capture_output=True, text=True, env=env, timeout=600)
            if out.returncode != 0:
                sys.exit(f"{name}: the replay failed:\n{out.stderr[-2000:]}")
            res = json.loads(out.stdout.strip().splitlines()[-1])
            got[name].append(res["cpu_us_per_msg"])
            threads = ", ".join(f"{k} {v}" for k, v in sorted(res["threads"].items(), key=lambda kv: -kv[1]))
            print(f"  round {r + 1}, {name}: {res['cpu_us_per_msg']} µs CPU per message "
                  f"({res['offered_per_s']:,}/s offered over {res['seconds']} s, {res['batch']} per "
                  f"batch; by thread: {threads}; collections by generation: {res['collections']})",
                  flush=True)
    for name, vals in got.items():
        print(f"{name}: median {statistics.median(vals):.1f} µs CPU per message ({', '.join(map(str, vals))})")
    if args.baseline:
        a, b = statistics.median(got["this checkout"]), statistics.median(got["baseline"])
        print(f"this checkout ÷ baseline: {a / b:.3f}×")


if __name__ == "__main__":
    main()
