#!/usr/bin/env python3
"""Rules engine throughput: rule evaluations per second for 1, 10, 100 and 300 rules over one
stream, with and without a WASM function in the condition, and memory per rule.

    .venv/bin/python benchmarks/rules.py            # everything, ~1 min
    .venv/bin/python benchmarks/rules.py --quick    # a smoke run
    .venv/bin/python benchmarks/rules.py --no-mqtt  # the engine only

One "message-evaluation" is one rule evaluated on one message (eKuiper's measure: it reports
150k message-evaluations/s for 300 rules on one MQTT source on 2 cores). The stream is JSON
climate readings from 100 devices on `sensors/{device}/climate`, fed to `RuleEngine.process`
in batches of 1,000 (as the runner hands them over); every rule subscribes to the stream.
Rule shapes, one per rule, cycling:
  filter   SELECT device, temperature FROM … WHERE temperature > T AND humidity < H
  window   SELECT device, avg(temperature), max(humidity) … GROUP BY device, TUMBLINGWINDOW(ss, 10)
  wasm     like filter, with WHERE check(temperature) > T — check() is a deployment's module
           (tests/modules/udf_trap_negative.wat, an identity function) in wasmtime; the rules
           share one guest call per batch (each distinct argument sent once)
Each figure is the median of 3 timed repeats after a warm-up, GC off while timing. The bus is
not part of this measure. A last section measures end to end over MQTT: a private Mosquitto
(started here, on a free port), `mosquitto_pub -l` sending the stream at QoS 1 from its own
process, and the node's `RuleRunner` (MqttBus subscription → queue → engine) with 300 rules;
timed from the first to the last message evaluated. Results go to
benchmarks/results/rules.json and a markdown table to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import subprocess
import tempfile
import json
import os
import platform
import random
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from iotwasm.container import WasmContainer  # noqa: E402
from iotwasm.engine import Runtime  # noqa: E402
from iotwasm.message import Message  # noqa: E402
from iotwasm.pipeline.rules import EventTime, RuleEngine, RuleSpec, WasmFunction  # noqa: E402

CHECK = ROOT / "tests" / "modules" / "udf_trap_negative.wat"
BATCH = 1000


def stream(n: int, seed: int = 1, t0: int = 1_700_000_000_000) -> list[Message]:
    """n readings 10 ms apart from t0 (event time in the payload and as arrival time)."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        d = f"d{i % 100}"
        body = {"device": d, "temperature": round(rnd.uniform(10, 40), 2),
                "humidity": round(rnd.uniform(20, 90), 1), "ts": t0 + i * 10}
        out.append(Message(f"sensors/{d}/climate", json.dumps(body).encode(), t0 + i * 10))
    return out


def sql(kind: str, i: int) -> str:
    t = 20 + i % 15
    if kind == "filter":
        return (f'SELECT device, temperature FROM "sensors/+/climate" '
                f'WHERE temperature > {t} AND humidity < {50 + i % 40}')
    if kind == "window":
        return ('SELECT device, avg(temperature) AS t, max(humidity) AS h, count(*) AS n '
                'FROM "sensors/+/climate" GROUP BY device, TUMBLINGWINDOW(ss, 10)')
    return (f'SELECT device, temperature FROM "sensors/+/climate" '
            f'WHERE check(temperature) > {t} AND humidity < {50 + i % 40}')


def build(n_rules: int, kinds: list[str], check: WasmFunction | None) -> RuleEngine:
    e = RuleEngine()
    for i in range(n_rules):
        kind = kinds[i % len(kinds)]
        e.add(RuleSpec(f"r{i}", sql(kind, i), EventTime("ts"),
                       functions={"check": check} if kind == "wasm" else {}))
    return e


def timed(engine: RuleEngine, n_msgs: int, repeats: int) -> float:
    """Median seconds to process n_msgs; each repeat continues the stream's event time (windows
    keep opening and closing; nothing is late)."""
    t0 = 1_700_000_000_000
    warm = stream(2 * BATCH, t0=t0)
    t0 += 2 * BATCH * 10
    for i in range(0, len(warm), BATCH):
        engine.process(warm[i:i + BATCH])
    times = []
    for r in range(repeats):
        msgs = stream(n_msgs, seed=r, t0=t0)
        t0 += n_msgs * 10
        batches = [msgs[i:i + BATCH] for i in range(0, len(msgs), BATCH)]
        gc.collect()
        gc.disable()
        t = time.perf_counter()
        for b in batches:
            engine.process(b)
        times.append(time.perf_counter() - t)
        gc.enable()
    return statistics.median(times)


def memory_per_rule(n: int, kinds: list[str], check, msgs: list[Message]) -> tuple[float, float]:
    """(bytes per compiled rule, bytes per rule with 100 open window groups)."""
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    e = build(n, kinds, check)
    compiled = tracemalloc.get_traced_memory()[0] - base
    for i in range(0, len(msgs), BATCH):
        e.process(msgs[i:i + BATCH])
    with_state = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return compiled / n, with_state / n


def mqtt_end_to_end(n_rules: int, kinds: list[str], n_msgs: int) -> dict:
    if str(ROOT / "tests") not in sys.path:
        sys.path.append(str(ROOT / "tests"))   # its own imports (ports) are its neighbours
    spec = importlib.util.spec_from_file_location("rules_brokers", ROOT / "tests" / "brokers.py")
    brokers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(brokers)
    from iotwasm.messaging import open_bus
    from iotwasm.pipeline import Outbox
    from iotwasm.pipeline.rules import RuleDefinition, RuleRunner

    class Unbounded(brokers.Mosquitto):
        """No cap on the queue of a slow subscriber: the measure must not lose messages."""

        def write_config(self) -> None:
            super().write_config()
            text = self.config_path.read_text().replace("max_queued_messages 10000", "max_queued_messages 0")
            self.config_path.write_text(text)

    with tempfile.TemporaryDirectory() as tmp:
        broker = Unbounded(Path(tmp) / "mosquitto").start()
        lines = Path(tmp) / "stream.txt"
        lines.write_bytes(b"\n".join(m.payload for m in stream(n_msgs)) + b"\n")

        async def run() -> dict:
            bus = open_bus(broker.url)
            await bus.connect()
            runner = RuleRunner(bus, outbox=Outbox(Path(tmp) / "outbox.db"))
            await runner.start()
            for i in range(n_rules):
                kind = kinds[i % len(kinds)]
                await runner.put(RuleDefinition(RuleSpec(f"r{i}", sql(kind, i), EventTime("ts"))))
            first = runner.engine.rules["r0"]
            await asyncio.sleep(0.5)
            pub = subprocess.Popen(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1",
                                    "-t", "sensors/d1/climate", "-l"], stdin=open(lines, "rb"))
            while first.counters.received == 0:
                await asyncio.sleep(0.001)
            t = time.perf_counter()
            last, last_change = 0, time.perf_counter()
            while first.counters.received < n_msgs:
                await asyncio.sleep(0.002)
                if first.counters.received != last:
                    last, last_change = first.counters.received, time.perf_counter()
                elif pub.poll() is not None and time.perf_counter() - last_change > 3:
                    break   # the publisher is done and nothing more arrives: report what came
            secs = last_change - t
            pub.wait()
            got = first.counters.received
            await runner.stop(0)
            await bus.close()
            return {"rules": n_rules, "shape": "+".join(kinds), "messages": n_msgs, "received": got,
                    "seconds": secs, "msg_per_s": got / secs, "evals_per_s": got * n_rules / secs}
        try:
            return asyncio.run(run())
        finally:
            broker.kill()


def mqtt_section(quick: bool) -> list[dict]:
    print("\nEnd to end over MQTT (Mosquitto, QoS 1 in, RuleRunner):\n")
    print("| rules | shape | messages received | msg/s | message-evaluations/s | × eKuiper 150k |")
    print("|---:|---|---:|---:|---:|---:|")
    runs = []
    for kinds in (["filter"], ["window"]):
        r = mqtt_end_to_end(300, kinds, 5000 if quick else 20000)
        runs.append(r)
        print(f"| 300 | {r['shape']} | {r['received']:,} of {r['messages']:,} | {r['msg_per_s']:,.0f} | "
              f"{r['evals_per_s']:,.0f} | {r['evals_per_s'] / 150_000:.1f} |", flush=True)
    return runs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-mqtt", action="store_true")
    ap.add_argument("--mqtt-only", action="store_true", help="only the MQTT section (keeps the other results)")
    args = ap.parse_args()
    out = Path(__file__).resolve().parent / "results" / "rules.json"
    if args.mqtt_only:
        results = json.loads(out.read_text())
        results["mqtt"] = mqtt_section(args.quick)
        out.write_text(json.dumps(results, indent=1))
        return
    repeats = 1 if args.quick else 3
    runtime = Runtime()
    container = WasmContainer("check", CHECK, runtime=runtime).start()
    check = WasmFunction("check", container, "scalar")
    results = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "python": platform.python_version(),
               "cpus": os.cpu_count(), "batch": BATCH, "runs": []}
    scenarios = [("filter", ["filter"]), ("window", ["window"]), ("mixed", ["filter", "window"]),
                 ("wasm", ["wasm"])]
    print("| rules | shape | messages | msg/s | message-evaluations/s | × eKuiper 150k |")
    print("|---:|---|---:|---:|---:|---:|")
    for n_rules in (1, 10, 100, 300):
        for name, kinds in scenarios:
            n_msgs = max(2000, min(50_000, 1_000_000 // n_rules))
            if args.quick:
                n_msgs = max(1000, n_msgs // 10)
            engine = build(n_rules, kinds, check)
            secs = timed(engine, n_msgs, repeats)
            late = sum(r.counters.late for r in engine.rules.values())
            assert late == 0, f"{late} late messages: the measure would skip work"
            evals = n_msgs * n_rules / secs
            results["runs"].append({"rules": n_rules, "shape": name, "messages": n_msgs, "seconds": secs,
                                    "msg_per_s": n_msgs / secs, "evals_per_s": evals})
            print(f"| {n_rules} | {name} | {n_msgs:,} | {n_msgs / secs:,.0f} | {evals:,.0f} | "
                  f"{evals / 150_000:.1f} |", flush=True)
    print()
    print("| shape | bytes per compiled rule | bytes per rule, 100 open groups |")
    print("|---|---:|---:|")
    mem_msgs = stream(5000)
    results["memory"] = {}
    for name, kinds in scenarios:
        compiled, state = memory_per_rule(100, kinds, check, mem_msgs)
        results["memory"][name] = {"compiled": compiled, "with_state": state}
        print(f"| {name} | {compiled:,.0f} | {state:,.0f} |")
    print(f"\nWASM function calls: {check.calls:,}, errors {check.errors}")
    if not args.no_mqtt:
        results["mqtt"] = mqtt_section(args.quick)
    container.stop()
    runtime.close()
    out.write_text(json.dumps(results, indent=1))
    print(f"results: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
