#!/usr/bin/env python3
"""Instructions per operation under callgrind, this checkout against a baseline checkout.

    .venv/bin/python benchmarks/instructions.py --baseline ../base/src    # ~5 min
    git archive <commit> src | tar -x -C /tmp/base    # one way to get a baseline's src

Instruction counts do not depend on what else the machine runs, so they compare two versions
of a micro path reliably where times do not (a 2-core machine shared with other work moves
times by 2× between runs). Each operation runs in a child process under
`valgrind --tool=callgrind` twice, N times and 0 times after the same set-up; the difference
divided by N is the cost of one operation (user-space instructions: kernel work such as
mapping memory is not counted, so instantiation looks cheaper than it is).

Operations, on examples/modules/range_filter.wasm with its config:
  load   Runtime(cache_dir).load() of a cached module in a fresh runtime
  ready  factory.new_guest(): instance, exports bound, init's state in place (a snapshot
         of the first guest's, where the module allows it; iot_init run otherwise)
  b1c    container.process([m]): a batch of one through the container
  b1py   the same message through the plain-Python range filter
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
W = ROOT / "examples" / "modules" / "range_filter.wasm"
CFG = {"field": "value", "min": "10", "max": "30"}
OPS = {"load": 40, "ready": 200, "b1c": 400, "b1py": 400}


def child(op: str, n: int) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run import make_messages, python_range_filter

    from iotwasm.container import WasmContainer
    from iotwasm.engine import Capabilities, HostContext, Limits, Runtime, prepare

    caps = Capabilities.grant("config", config=CFG)
    d = tempfile.mkdtemp()
    Runtime(d, epoch_tick_ms=100_000).load(W)
    runtimes = [Runtime(d, epoch_tick_ms=100_000) for _ in range(OPS["load"])]
    for r in runtimes:
        r.engine(r.settings_for(Limits()))
    rt = Runtime(d, epoch_tick_ms=100_000)
    factory = prepare(rt.load(W), Limits(), HostContext("b", caps))
    container = WasmContainer("rf", W, runtime=rt, capabilities=caps).start()
    py = python_range_filter("value", 10.0, 30.0)
    batches = [[m] for m in make_messages(OPS["b1c"])]
    for b in batches[:20]:  # warm every path the same way, whatever op is measured
        container.process(b)
        py(b)
    factory.new_guest()
    keep = []
    if op == "load":
        for r in runtimes[:n]:
            r.load(W, name="b")
    elif op == "ready":
        for _ in range(n):
            keep.append(factory.new_guest())
    elif op == "b1c":
        for b in batches[:n]:
            container.process(b)
    elif op == "b1py":
        for b in batches[:n]:
            py(b)
    shutil.rmtree(d, ignore_errors=True)
    os._exit(0)  # nothing after the measured part: teardown is the same for 0 and N


def count(src: str, op: str, n: int) -> int:
    env = {**os.environ, "PYTHONPATH": src}
    proc = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                           sys.executable, __file__, "--child", op, str(n)],
                          env=env, capture_output=True, text=True, timeout=1800)
    for line in proc.stderr.splitlines():
        if "Collected :" in line:
            return int(line.split()[-1])
    raise SystemExit(f"callgrind gave no count for {op} {n} with {src}:\n{proc.stderr[-2000:]}")


def per_op(src: str) -> dict[str, float]:
    base = count(src, "none", 0)
    return {op: (count(src, op, n) - base) / n for op, n in OPS.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", help="src directory of the version to compare against")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    now = per_op(str(ROOT / "src"))
    then = per_op(args.baseline) if args.baseline else None
    print("| operation | instructions/op" + (" (baseline) | instructions/op (this) | this / "
                                              "baseline |" if then else " |"))
    print("|---|---:|" + ("---:|---:|" if then else ""))
    for op in OPS:
        if then:
            print(f"| {op} | {then[op]:,.0f} | {now[op]:,.0f} | {now[op] / then[op]:.2f} |")
        else:
            print(f"| {op} | {now[op]:,.0f} |")
    b1 = now["b1c"] / now["b1py"]
    line = f"batch of one, container / plain Python: {b1:.2f}"
    if then:
        line += f" (baseline {then['b1c'] / then['b1py']:.2f})"
    print("\n" + line)


if __name__ == "__main__":
    main()
