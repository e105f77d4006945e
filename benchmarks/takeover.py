#!/usr/bin/env python3
"""Controller leader takeover: how long the fleet has no leader when the leading controller
is killed (SIGKILL) or stops cleanly (SIGTERM: it releases the lease).

    .venv/bin/python benchmarks/takeover.py                 # 5 repeats of each, lease TTL 3 s
    .venv/bin/python benchmarks/takeover.py --repeats 10 --lease-ttl 2

Two `iotwasm controller` processes run against a private nats-server with JetStream; this
process watches the lease key (reading it every 20 ms). Measured, per repeat, from the signal
to the other controller holding the lease; the stopped one is started again (as a standby)
before the next repeat. A killed leader's key ages out between 2/3 of the TTL and the TTL
after the kill (it renews every third of the TTL), and a standby tries once a second.
Results go to benchmarks/results/takeover.json and a markdown table to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))

from brokers import NatsServer  # noqa: E402

from iotwasm.fleet import FleetStore  # noqa: E402


async def holder(store: FleetStore) -> str | None:
    got = await store.lease_holder()
    return got[0].get("id") if got else None


async def wait_holder(store: FleetStore, want, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = await holder(store)
        if got is not None and want(got):
            return got
        await asyncio.sleep(0.02)
    raise SystemExit(f"no takeover within {timeout} s")


async def measure(url: str, workdir: Path, repeats: int, ttl: float) -> dict:
    def spawn(cid: str) -> subprocess.Popen:
        log = open(workdir / f"{cid}.log", "ab")
        return subprocess.Popen([sys.executable, "-m", "iotwasm.cli.main", "controller", "--fleet", url,
                                 "--id", cid, "--lease-ttl", str(ttl)], stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": str(ROOT / "src")})

    procs = {"c1": spawn("c1")}
    store = await FleetStore.connect(url)
    results: dict[str, list[float]] = {"SIGKILL": [], "SIGTERM": []}
    try:
        await wait_holder(store, lambda h: h == "c1")
        procs["c2"] = spawn("c2")
        await asyncio.sleep(3)     # c2 up and standing by
        for i in range(repeats):
            for how, sig in (("SIGKILL", signal.SIGKILL), ("SIGTERM", signal.SIGTERM)):
                leader = await holder(store)
                t0 = time.monotonic()
                procs[leader].send_signal(sig)
                await wait_holder(store, lambda h: h != leader)
                results[how].append(time.monotonic() - t0)
                procs[leader].wait(20)
                procs[leader] = spawn(leader)
                await asyncio.sleep(3)   # the restarted one is a standby again
                print(f"  {how} #{i + 1}: {results[how][-1]:.2f} s", file=sys.stderr)
    finally:
        await store.close()
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
        for p in procs.values():
            p.wait(20)
    return {how: {"median_s": round(statistics.median(v), 3), "max_s": round(max(v), 3),
                  "min_s": round(min(v), 3), "runs": [round(x, 3) for x in v]} for how, v in results.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--lease-ttl", type=float, default=3.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(Path(tmp) / "nats").start()
        try:
            out = asyncio.run(measure(server.url, Path(tmp), args.repeats, args.lease_ttl))
        finally:
            server.stop()
    out = {"lease_ttl_s": args.lease_ttl, "repeats": args.repeats, **out}
    (ROOT / "benchmarks" / "results" / "takeover.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"| leader stopped by | takeover, median (min–max), lease TTL {args.lease_ttl:g} s |\n|---|---|")
    for how in ("SIGKILL", "SIGTERM"):
        r = out[how]
        print(f"| {how} | {r['median_s']:.2f} s ({r['min_s']:.2f}–{r['max_s']:.2f} s) |")


if __name__ == "__main__":
    main()
