"""The hot update under load: while load flows through iotwasm, the convert deployment's
module is replaced by a copy with another digest; what was lost, duplicated or delayed around
the swap is reported with the time until the new revision served.

Split from run.py: a run of its own, on its own broker and node, after the systems' steps.
"""

from __future__ import annotations

import hashlib
import time
import traceback
from pathlib import Path

from harness import MODULES, PROCS, Config
from phases import Phase
from report import kept_up
from systems import IotwasmNode, wait_flowing, write_deployments


# -- hot update under load -------------------------------------------------------------------
def with_custom_section(wasm: bytes, name: bytes, data: bytes) -> bytes:
    """The module plus a custom section: a new digest, the same code."""
    from iotwasm.engine.wasm_scan import leb128

    body = leb128(len(name)) + name + data
    return wasm + b"\x00" + leb128(len(body)) + body


def pick_hot_rate(iot: dict | None) -> tuple[int, str]:
    """The highest load step iotwasm kept up with, so that a loss during the swap can only
    come from the swap (at a rate it cannot sustain, the broker drops what queues up)."""
    if iot is None:   # the hot update's own system (storeAndForward: false) was not run
        return 500, "500 msg/s: iotwasm (storeAndForward: false) ran no load step here"
    ok = [int(ph["rate_asked"]) for ph in iot.get("phases", []) if kept_up(ph)]
    if ok:
        return max(ok), f"{max(ok):,} msg/s, the highest load step iotwasm kept up with"
    return 500, "500 msg/s: iotwasm kept up with none of the load steps"


def run_hot_update(cfg: Config, tmp: Path, rate: int, why: str) -> dict:
    out: dict = {"status": "ok", "rate": rate, "rate_reason": why, "seconds": cfg.hot_seconds}
    wd = tmp / f"hot-{rate}"
    broker = PROCS.broker(wd / "broker")
    sut = IotwasmNode("iotwasm", wd, broker, saf=False, name=f"e2e-hot-{rate}")
    new_module = wd / "unit_convert-v2.wasm"
    orig = (MODULES / "unit_convert.wasm").read_bytes()
    new_module.write_bytes(with_custom_section(orig, b"iotwasm.e2e", b"hot update under load"))
    out["old_digest"] = "sha256:" + hashlib.sha256(orig).hexdigest()
    out["new_digest"] = "sha256:" + hashlib.sha256(new_module.read_bytes()).hexdigest()
    t0 = time.monotonic()
    try:
        sut.start()
        wait_flowing(broker, 60, sut.alive)
        Phase(cfg, broker, sut.pid, "warm-up", 1000, cfg.warmup_seconds).run()
        ph = Phase(cfg, broker, sut.pid, "hot update", rate, cfg.hot_seconds)
        ph.start()
        time.sleep(cfg.hot_swap_at)
        written = time.time()
        write_deployments(sut.mdir, new_module)
        res = ph.finish()
        evs = [e for e in sut.events(written - 0.001) if e["object"] == "convert"]
        updated = next((e for e in evs if e["kind"] == "updated"), None)
        out["events"] = [{**e, "t_after_write_ms": round((e["ts"] - written) * 1000, 1)} for e in evs]
        out["revisions"] = [r for r in sut.revisions() if r["name"] == "convert"]
        out["manifest_written_ns"] = int(written * 1e9)
        if updated:
            out["write_to_serving_ms"] = round((updated["ts"] - written) * 1000, 1)
        else:
            out["error"] = "no 'updated' event for convert after the manifest was rewritten"
            out["status"] = "failed"
        # the receive stream around the swap: its largest gap and the latency there
        out["load"] = res
        w_ns = int(written * 1e9)
        near = [g for g in res["largest_gaps"] if w_ns - 1e9 <= g["after_ns"] <= w_ns + 3e9]
        out["largest_gap_near_swap_ms"] = max((g["gap_ms"] for g in near), default=0.0)
        out["largest_gap_anywhere_ms"] = max((g["gap_ms"] for g in res["largest_gaps"]), default=0.0)
        print(f"  hot update at {rate:,}/s: lost {res['lost']}, duplicates {res['duplicates']}, "
              f"manifest written → new revision serving {out.get('write_to_serving_ms')} ms, largest "
              f"receive gap near the swap {out['largest_gap_near_swap_ms']} ms, p99 {res['p99_ms']:.2f} ms, "
              f"max {res['max_ms']:.1f} ms", flush=True)
    except Exception as e:  # noqa: BLE001 - any failure is reported, and the run goes on
        out["status"] = "failed"
        out["error"] = f"{type(e).__name__}: {e}"
        out["log_tail"] = sut.log_tail(20)
        print(f"  FAILED: {out['error']}", flush=True)
        traceback.print_exc()
    finally:
        sut.stop()
        broker.kill()
        out["wall_s"] = round(time.monotonic() - t0, 1)
    return out
