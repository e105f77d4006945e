"""iotwasm's MqttBus alone: QoS 1 publishes with no route and no wasm (the bus probe), and a
subscriber that only acknowledges what it receives (the floor).

Split from run.py. Each probe runs in a child process, `run.py --bus-probe PORT` or `run.py
--floor-probe PORT` (hidden options), so that its CPU is its own: the `*_child` functions are
what those children run, the `run_*` functions start them against a broker and measure.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from harness import PROCS, PY, RUN_PY, Processes
from phases import CpuMeter, _readline, ctx_switches, loadgen_cmd, proc_cpu_s


# -- the node's MQTT publish path alone --------------------------------------------------------
def bus_probe_child(port: int, n: int) -> None:
    """(Runs in a child process.) QoS 1 publishes through iotwasm's MqttBus: awaited one at a
    time (the round trip), and 100 at a time awaited together (how the route's MQTT sink and
    the outbox forwarder send a batch). Prints a JSON line."""
    import asyncio

    from iotwasm.messaging.mqtt_bus import MqttBus

    payload = (b'{"device":"dev-0001","sensor":"temperature","value":70.7,"unit":"F","seq":1,'
               b'"ts":1795384906395513378}')

    async def main() -> dict:
        bus = MqttBus(f"mqtt://127.0.0.1:{port}")
        await bus.connect()
        res = {}
        for label in ("one_at_a_time", "window_100") * 2:
            t, c = time.perf_counter(), time.process_time()
            if label == "one_at_a_time":
                for _ in range(n):
                    await bus.publish("probe/dev-0001", payload, qos=1)
            else:
                for _ in range(0, n, 100):
                    await asyncio.gather(*(bus.publish("probe/dev-0001", payload, qos=1)
                                           for _ in range(100)))
            wall, cpu = time.perf_counter() - t, time.process_time() - c
            res[label] = {"msg_per_s": round(n / wall), "wall_us_per_msg": round(wall / n * 1e6, 1),
                          "cpu_us_per_msg": round(cpu / n * 1e6, 1)}  # the second round is kept
        await bus.close()
        return res

    print(json.dumps(asyncio.run(main())), flush=True)


def run_bus_probe(tmp: Path, quick: bool) -> dict:
    broker = PROCS.broker(tmp / "bus-probe" / "broker")
    try:
        meter = CpuMeter(None, broker.proc.pid)
        p = PROCS.spawn([PY, str(RUN_PY), "--bus-probe", str(broker.port),
                         "--bus-probe-n", "1000" if quick else "3000"],
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = p.communicate(timeout=120)
        if p.returncode != 0:
            return {"status": "failed", "error": err.strip()[-500:]}
        res = {"status": "ok", **json.loads(out), "cpu": meter.stop()}
        print(f"  one at a time: {res['one_at_a_time']['msg_per_s']:,} msg/s "
              f"({res['one_at_a_time']['wall_us_per_msg']} µs each); windows of 100: "
              f"{res['window_100']['msg_per_s']:,} msg/s", flush=True)
        return res
    finally:
        broker.kill()


# -- the floor: receiving alone ---------------------------------------------------------------
def floor_probe_child(port: int, gather_ms: int) -> None:
    """(Runs in a child process.) An MqttBus subscriber at QoS 1 whose handler does nothing:
    each message is received, decoded, handed to the subscription and acknowledged. Prints
    "ready" once subscribed, then sleeps until killed. `gather_ms` 0 reads each message as
    it arrives; the default gathers a busy connection's reads (messaging/gather.py)."""
    import asyncio

    from iotwasm.messaging.mqtt_bus import MqttBus

    async def main() -> None:
        bus = MqttBus(f"mqtt://127.0.0.1:{port}", gather_ms=gather_ms)
        await bus.connect()

        async def nothing(msg) -> None:
            return None

        await bus.subscribe("in/#", nothing, qos=1)
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def run_floor_probe(tmp: Path, quick: bool, rate: int = 5000) -> dict:
    """CPU per message of the floor subscriber (`floor_probe_child`) with the load generator
    paced at `rate`, reading each message as it arrives (`per_message`: what any asyncio
    process pays on this machine to be woken for, read and acknowledge a message arriving
    alone) and with the bus's default gathered reads (`gathered`)."""
    res: dict = {"status": "ok", "rate": rate}
    for key, gather_ms in (("per_message", 0), ("gathered", 1)):
        one = _floor_run(tmp / f"floor-probe-{key}", quick, rate, gather_ms)
        if one.get("status") != "ok":
            return one
        res[key] = one
        print(f"  {rate:,} msg/s received and acknowledged, nothing else, gather_ms={gather_ms}: "
              f"{one['cpu_us_per_msg']} µs CPU and {one['ctx_switches_per_msg']} context switches "
              "per message", flush=True)
    return res


def _floor_run(tmp: Path, quick: bool, rate: int, gather_ms: int) -> dict:
    broker = PROCS.broker(tmp / "broker")
    try:
        p = PROCS.spawn([PY, str(RUN_PY), "--floor-probe", str(broker.port), "--floor-gather",
                         str(gather_ms)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, sut=True)
        if _readline(p, 30).strip() != "ready":
            return {"status": "failed", "error": (p.stderr.read() if p.poll() is not None else "")[-500:]}
        secs = 3 if quick else 8
        c0, x0 = proc_cpu_s(p.pid), ctx_switches(p.pid)
        gen = subprocess.run(loadgen_cmd("gen", "--port", str(broker.port), "--rate", str(rate),
                                         "--seconds", str(secs), "--seq-start", "0"),
                             capture_output=True, text=True, timeout=secs + 60)
        time.sleep(0.5)   # the last acknowledgements
        n = json.loads(gen.stdout.strip().splitlines()[-1])["sent"]
        res = {"status": "ok", "messages": n,
               "cpu_us_per_msg": round((proc_cpu_s(p.pid) - c0) / n * 1e6, 1),
               "ctx_switches_per_msg": round((ctx_switches(p.pid) - x0) / n, 2)}
        Processes.end(p)
        return res
    finally:
        broker.kill()
