#!/usr/bin/env python3
"""End-to-end benchmark: iotwasm against plain Python and Node-RED, through a real Mosquitto.

    .venv/bin/python benchmarks/e2e/run.py              # full run (~5.5 min), results/e2e.json
    .venv/bin/python benchmarks/e2e/run.py --quick      # smoke run (~2.5 min), results/e2e-quick.json
    .venv/bin/python benchmarks/e2e/run.py --only iotwasm --profile --no-hot-update
    .venv/bin/python benchmarks/e2e/run.py --only iotwasm --rates 20,200,1000,5000 --no-hot-update
    .venv/bin/python benchmarks/e2e/run.py --only iotwasm-baseline,iotwasm --baseline ../base --no-hot-update
    .venv/bin/python benchmarks/e2e/run.py --only iotwasm-baseline,iotwasm-saf,node-red --baseline ../base \
        --baseline-saf --rates 5000,10000 --no-hot-update     # the durable default, before/after
    .venv/bin/python benchmarks/e2e/run.py --only iotwasm-saf,node-red --pin 1 --no-hot-update
        # each system alone on CPU 1; harness, broker, load generator and collector on the rest
    .venv/bin/python benchmarks/e2e/run.py --only iotwasm-baseline,iotwasm-saf,node-red --baseline ../base \
        --baseline-saf --rates 5000,10000 --no-hot-update --rounds 3
        # three rounds, the order reversed each time: each round's ratios and their medians

Partial runs (--only, --rates, --no-hot-update) write results/e2e-partial.json, or --out PATH.

The transform, the same in every system: a JSON temperature reading in °C on ``in/{device}``
(QoS 1) → converted to °F → kept only when 40 ≤ °F ≤ 104 → published on ``out/{device}``
(QoS 1). About 100 bytes a message; 80 % pass the filter.

Systems, one at a time, each against a fresh private Mosquitto (same binary and config, from
tests/brokers.py) on a free loopback port:

* ``iotwasm``: `iotwasm up` with two Deployments (examples/modules/unit_convert.wasm with
  ``to: F``, range_filter.wasm with ``field: value, min: 40, max: 104``) and a Route
  in/{device} → convert → plausible → out/{device}; once with ``storeAndForward: false`` and
  once with the durable default ``storeAndForward: true`` (the SQLite outbox).
* ``python``: plain_python.py, one paho-mqtt client doing json.loads, conversion, range check
  and publish; no sandbox.
* ``node-red``: Node-RED (benchmarks/e2e/package.json, installed into node_modules/ here on
  first use) running nodered/flow.json headless: mqtt in → function → mqtt out.
* ``iotwasm-baseline``: the ``iotwasm`` system run from another checkout (``--baseline DIR``,
  e.g. ``git worktree add ../base main``; its ``src`` goes first on PYTHONPATH, everything else
  — this environment, the modules, the broker, the load — is the same), so that a change is
  measured before and after in one run, on the same machine at the same time.

At rest first: after start-up and a warm-up, nothing is offered for 10 s (from 2 s after the
warm-up's last message) and the system's CPU and context switches are read, as a gateway
spends most of its time between its sensors' readings.

Load: loadgen.py (a separate process) offers 1,000 / 5,000 / 10,000 msg/s for N seconds each
(``--rates``, down to 10 msg/s for a quiet gateway);
every message carries its seq and time.time_ns(). A collector (another process) subscribed to
``out/#`` computes what was delivered, lost (expected passing seqs not received), duplicated,
and the latency (receive time − send time). Then two "as fast as possible" steps:

* ``max``: closed loop — the generator sends as fast as it can while fewer than WINDOW passing
  messages are on their way (it reads the collector's count), so the system always has work
  and nothing piles up in the broker. Sustained throughput = the better of its delivery rate
  and that of the highest paced step the system kept up with.
* ``flood``: open loop — the generator sends as fast as it can, full stop. On a small machine
  this mostly measures who wins the CPU against the generator and what the broker drops once
  a subscriber's queue (max_queued_messages 10000) is full.

A step after which not every expected message came out (lost, or still queued when the drain
timeout ran out) is followed by a fresh broker and a fresh system. CPU time and context switches of the system under test are read
from /proc, and so is what the rest of the machine was doing meanwhile ("other processes").

Afterwards, a hot update: while load flows through iotwasm, the convert deployment's module is
replaced by a copy with an extra custom section (a different digest, identical behaviour), by
rewriting the manifest; lost and duplicate messages, the receive stream around the swap and
the time from the manifest write to the node's 'updated' event (node.db, table events) are
reported. Last, iotwasm's MqttBus alone: QoS 1 publishes awaited one at a time (the round
trip) and 100 at a time (how the sinks and the outbox forwarder send a batch); and the floor,
an MqttBus subscriber that receives 5k msg/s paced and only acknowledges them, reading each
message as it arrives (what being woken for each message alone costs before any work is done)
and with the bus's default gathered reads.

Every process this starts is killed at the end, also on failure or Ctrl-C.

The harness, in this directory: run.py (this command line and the order of a run), harness.py
(paths, settings, the processes and brokers), phases.py (a measured load step, the collector,
CPU from /proc), systems.py (the systems under test), load_steps.py (one system's steps),
profiler.py (--profile), hot_update.py, probes.py (the bus and the floor, run as children of
this file), report.py (the summary and the tables, the machine read by ../machine.py, which
benchmarks/run.py shares); loadgen.py and plain_python.py run as
processes of their own. replay.py is a command of its own: the node's CPU per message on the
same route without the broker and the network, to compare two versions of the node.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

# the harness's modules are this file's neighbours, whatever the working directory
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.append(str(Path(__file__).resolve().parent.parent))   # benchmarks/machine.py, shared with run.py there

import harness
from harness import (BASELINE, PASS_FRACTION, PROCS, PY, RATES, RESULTS, ROOT, SUT_CPUS, SYSTEMS, TITLES, Config,
                     _on_signal)
from hot_update import pick_hot_rate, run_hot_update
from load_steps import run_system
from probes import bus_probe_child, floor_probe_child, run_bus_probe, run_floor_probe
from report import code_version, machine_info, markdown, summary
from systems import node_red_version


def main() -> int:
    ap = argparse.ArgumentParser(description="End-to-end benchmark through Mosquitto: iotwasm, "
                                             "plain Python, Node-RED.")
    ap.add_argument("--quick", action="store_true", help="short smoke run (2 s steps)")
    ap.add_argument("--only", default=",".join(SYSTEMS),
                    help=f"comma-separated subset of {','.join(SYSTEMS)} (default: all)")
    ap.add_argument("--rates", help="comma-separated paced load steps in msg/s (default: "
                                    f"{','.join(map(str, RATES))})")
    ap.add_argument("--no-hot-update", action="store_true", help="skip the hot-update step")
    ap.add_argument("--profile", action="store_true",
                    help="py-spy the iotwasm node during the 1k/s, 5k/s and max steps")
    ap.add_argument("--baseline", type=Path, metavar="DIR",
                    help=f"another checkout of iotwasm: system {BASELINE} runs the node from its src")
    ap.add_argument("--baseline-saf", action="store_true",
                    help=f"system {BASELINE} runs with storeAndForward: true (the durable default), "
                         "to compare it with iotwasm-saf")
    ap.add_argument("--bus-probe", type=int, metavar="PORT", help=argparse.SUPPRESS)
    ap.add_argument("--bus-probe-n", type=int, default=3000, help=argparse.SUPPRESS)
    ap.add_argument("--floor-probe", type=int, metavar="PORT", help=argparse.SUPPRESS)
    ap.add_argument("--floor-gather", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--pin", metavar="CPUS", help="run each system under test on these CPUs "
                    "(e.g. 1) and the harness, broker, load generator and collector on the others")
    ap.add_argument("--rounds", type=int, default=1, metavar="N",
                    help="run every system N times, the order reversed each round, and print each "
                         "round's CPU per message against the others and the medians (the tables "
                         "show the first round)")
    ap.add_argument("--out", type=Path, help="result file (default: results/e2e.json, "
                                             "results/e2e-quick.json with --quick)")
    args = ap.parse_args()
    if args.floor_probe:
        floor_probe_child(args.floor_probe, args.floor_gather)
        return 0
    if args.bus_probe:
        bus_probe_child(args.bus_probe, args.bus_probe_n)
        return 0
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    for s in only:
        if s not in SYSTEMS and s != BASELINE:
            ap.error(f"unknown system {s!r}; choose from {', '.join(SYSTEMS)} (and {BASELINE} "
                     f"with --baseline)")
    if (BASELINE in only) != (args.baseline is not None):
        ap.error(f"--baseline DIR and system {BASELINE} go together")
    if args.baseline is not None:
        harness.BASELINE_SRC = args.baseline.resolve() / "src"
        harness.BASELINE_SAF = args.baseline_saf
        if harness.BASELINE_SAF:
            TITLES[BASELINE] = "iotwasm baseline (storeAndForward: true, default)"
        if not (harness.BASELINE_SRC / "iotwasm" / "__init__.py").exists():
            ap.error(f"--baseline {args.baseline}: no src/iotwasm there")
    if args.rounds < 1:
        ap.error(f"--rounds {args.rounds}: at least 1")
    cfg = Config.make(args.quick)
    if args.rates:
        cfg.rates = tuple(int(r) for r in args.rates.split(","))
    partial = set(only) != set(SYSTEMS) or args.no_hot_update or bool(args.rates)
    out_path = args.out or RESULTS / ("e2e-quick.json" if args.quick else
                                      "e2e-partial.json" if partial else "e2e.json")
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)

    t_start = time.monotonic()
    if args.pin:
        SUT_CPUS.update(int(c) for c in args.pin.split(","))
        rest = set(os.sched_getaffinity(0)) - SUT_CPUS
        if not SUT_CPUS <= set(os.sched_getaffinity(0)) or not rest:
            print(f"--pin {args.pin}: needs CPUs this process may use and leaves none for the rest",
                  file=sys.stderr)
            return 2
        os.sched_setaffinity(0, rest)   # the harness and everything it starts but the systems
    machine = machine_info()
    if args.pin:
        machine["pinned"] = {"sut": ",".join(map(str, sorted(SUT_CPUS))),
                             "rest": ",".join(map(str, sorted(set(os.sched_getaffinity(0)))))}
    if harness.BASELINE_SRC is not None:
        machine["baseline"] = {"src": str(harness.BASELINE_SRC), "code": code_version(harness.BASELINE_SRC.parent)}
    results: dict = {"machine": machine, "quick": cfg.quick,
                     "command": " ".join([".venv/bin/python" if ".venv" in PY else PY, *sys.argv]),
                     "config": {"rates": cfg.rates, "rate_seconds": cfg.rate_seconds,
                                "max_seconds": cfg.max_seconds, "warmup_seconds": cfg.warmup_seconds,
                                "hot_seconds": cfg.hot_seconds, "message_bytes": "~105",
                                "pass_fraction": PASS_FRACTION, "devices": 100},
                     "systems": {}}
    tmp = Path(tempfile.mkdtemp(prefix="iotwasm-e2e-"))
    try:
        rounds: list[dict] = []
        for r in range(args.rounds):
            rounds.append({})
            for key in (only if r % 2 == 0 else only[::-1]):   # drift hits each order alike
                print(f"{TITLES[key]}:" + (f" (round {r + 1} of {args.rounds})" if args.rounds > 1 else ""),
                      flush=True)
                where = tmp / f"round{r + 1}" if args.rounds > 1 else tmp
                where.mkdir(exist_ok=True)
                rounds[r][key] = run_system(key, cfg, where, args.profile)
        results["systems"] = rounds[0]
        if args.rounds > 1:
            results["more_rounds"] = rounds[1:]
        machine["node-red"] = node_red_version()
        if not args.no_hot_update:
            rate, why = pick_hot_rate(results["systems"].get("iotwasm"))
            runs = [(rate, why)]
            if rate != 10_000:
                runs.append((10_000, ("10k msg/s, more than iotwasm sustains: losses here include "
                                      "what the broker drops from the node's full queue")))
            results["hot_update"] = []
            for r, w in runs:
                print(f"hot update under load ({r:,} msg/s):", flush=True)
                results["hot_update"].append(run_hot_update(cfg, tmp, r, w))
        if any(k.startswith("iotwasm") for k in only):
            print("iotwasm's MQTT bus alone (QoS 1 publishes, no route, no wasm):", flush=True)
            results["bus_probe"] = run_bus_probe(tmp, cfg.quick)
            print("the floor: iotwasm's MQTT bus receiving alone (QoS 1, paced, nothing done):",
                  flush=True)
            results["floor_probe"] = run_floor_probe(tmp, cfg.quick)
    except KeyboardInterrupt:
        print("interrupted: stopping every process", flush=True)
        PROCS.cleanup()
        return 130
    finally:
        PROCS.cleanup()
        if not os.environ.get("E2E_KEEP_TMP"):
            shutil.rmtree(tmp, ignore_errors=True)
    machine["loadavg_at_end"] = round(os.getloadavg()[0], 2)
    machine["code_at_end"] = code_version()
    if machine["code_at_end"] != machine["code"]:
        print(f"WARNING: the iotwasm sources changed during the run ({machine['code']} → "
              f"{machine['code_at_end']}): systems started at different times may have run "
              "different code", flush=True)
    results["wall_s"] = round(time.monotonic() - t_start, 1)
    results["summary"] = summary(results)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(markdown(results))
    print(f"\nresults: {out_path.relative_to(ROOT) if out_path.is_relative_to(ROOT) else out_path}")
    every = [results["systems"], *results.get("more_rounds", [])]
    return 0 if all(r["status"] == "ok" for rnd in every for r in rnd.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
