"""The greenhouse demo: simulated sensors through a chain of example modules.

    frames ─▶ decode ─┬─ temperature ─▶ convert °C→°F ─▶ filter 40–104 °F ─▶ average ─▶ alert? ─▶ sign
                      └─ humidity ────────────────────────────────────────▶ average

Every stage is a sandboxed WasmContainer built from `examples/modules/`. Corrupt frames and
implausible readings are injected by the simulator and show up as dead letters and drops.
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..container import WasmContainer
from ..engine import Capabilities, Limits, Runtime
from ..errors import ModuleNotFound
from ..message import Message
from ..sensors import SensorField

ALERT_F = 80.0
SIM_SECONDS_PER_TICK = 600  # ten simulated minutes per tick, so a day passes in a short demo


def find_examples(explicit: Path | None = None) -> Path:
    candidates = [explicit] if explicit else [
        Path.cwd() / "examples" / "modules",
        Path(__file__).resolve().parents[3] / "examples" / "modules",
    ]
    for c in candidates:
        if c and (c / "frame_decoder.wasm").is_file():
            return c
    raise ModuleNotFound("example modules not found (looked in "
                         f"{', '.join(str(c) for c in candidates if c)}); run `make examples`")


@dataclass
class Stage:
    container: WasmContainer
    messages_in: int = 0
    messages_out: int = 0
    dead: int = 0
    seconds: float = 0.0
    last_error: str = ""

    def run(self, messages: list[Message]) -> list[Message]:
        if not messages:
            return []
        t0 = time.perf_counter()
        result = self.container.process(messages)
        self.seconds += time.perf_counter() - t0
        self.messages_in += len(messages)
        self.messages_out += len(result.outputs)
        self.dead += len(result.dead_letters)
        if result.dead_letters:
            self.last_error = result.dead_letters[-1].reason
        return [Message(o.topic or messages[o.index].topic, o.payload, messages[o.index].timestamp_ms)
                for o in result.outputs]


@dataclass
class DemoState:
    started: float = field(default_factory=time.monotonic)
    readings: int = 0
    latest: dict[str, dict] = field(default_factory=dict)
    alerts: deque = field(default_factory=lambda: deque(maxlen=6))
    alert_count: int = 0


def build_stages(rt: Runtime, modules: Path) -> dict[str, Stage]:
    def stage(name: str, file: str, **config: str) -> Stage:
        caps = Capabilities.grant("config", "log", config=config)
        c = WasmContainer(name, modules / file, runtime=rt, capabilities=caps,
                          limits=Limits.parse(memory="16Mi", timeout="100ms"))
        return Stage(c.start())

    return {
        "decode": stage("decode", "frame_decoder.wasm"),
        "convert": stage("convert", "unit_convert.wasm", to="F"),
        "filter": stage("filter", "range_filter.wasm", field="value", min="40", max="104"),
        "avg-temp": stage("avg-temp", "moving_average.wasm", window="10"),
        "avg-humidity": stage("avg-humidity", "moving_average.wasm", window="10"),
        "sign": stage("sign", "hmac_signer.wasm", key="greenhouse-demo-key"),
    }


def step(stages: dict[str, Stage], frames: list[Message], state: DemoState) -> None:
    state.readings += len(frames)
    decoded = stages["decode"].run(frames)
    temps = [m for m in decoded if m.topic.endswith("/temperature")]
    humid = [m for m in decoded if m.topic.endswith("/humidity")]
    temp_avgs = stages["avg-temp"].run(stages["filter"].run(stages["convert"].run(temps)))
    hum_avgs = stages["avg-humidity"].run(humid)
    alerts = []
    for m in temp_avgs:
        reading = json.loads(m.payload)
        state.latest.setdefault(reading["device"], {})["temp_f"] = reading["avg"]
        if reading["avg"] > ALERT_F:
            alert = {"device": reading["device"], "avg_f": reading["avg"], "threshold_f": ALERT_F}
            alerts.append(Message(f"alerts/{reading['device']}", json.dumps(alert).encode()))
    for m in hum_avgs:
        reading = json.loads(m.payload)
        state.latest.setdefault(reading["device"], {})["humidity"] = reading["avg"]
    for signed in stages["sign"].run(alerts):
        state.alert_count += 1
        state.alerts.append(signed.payload.decode())


def render(stages: dict[str, Stage], state: DemoState) -> Group:
    elapsed = max(1e-9, time.monotonic() - state.started)
    t = Table(title="pipeline stages (each a WASM container)", expand=True)
    for col in ("stage", "in", "out", "dead letters", "µs/msg", "last error"):
        t.add_column(col, justify="right" if col not in ("stage", "last error") else "left")
    for name, s in stages.items():
        per = s.seconds / s.messages_in * 1e6 if s.messages_in else 0.0
        t.add_row(name, f"{s.messages_in:,}", f"{s.messages_out:,}", f"{s.dead:,}", f"{per:.2f}",
                  Text(s.last_error[:60]))
    d = Table(title="devices (moving averages)", expand=True)
    d.add_column("device")
    d.add_column("temp °F", justify="right")
    d.add_column("humidity %", justify="right")
    for dev in sorted(state.latest)[:10]:
        v = state.latest[dev]
        temp = v.get("temp_f")
        style = "bold red" if temp is not None and temp > ALERT_F else ""
        d.add_row(dev, Text(f"{temp:.1f}", style=style) if temp is not None else "-",
                  f"{v['humidity']:.1f}" if "humidity" in v else "-")
    alerts = Text("\n".join(state.alerts) or "none yet")
    head = (f"{state.readings:,} readings in {elapsed:.1f}s "
            f"({state.readings / elapsed:,.0f}/s) · {state.alert_count} signed alerts")
    return Group(Panel(head, title="iotwasm greenhouse demo"), t, d,
                 Panel(alerts, title=f"latest alerts (avg > {ALERT_F:.0f} °F, HMAC-signed)"))


def run_demo(*, seconds: float, devices: int, rate: float, modules_dir: Path | None,
             console: Console) -> DemoState:
    modules = find_examples(modules_dir)
    field_ = SensorField(devices=devices, sensors=("temperature", "humidity"))
    state = DemoState()
    tick = 0.1
    per_tick = max(1, round(rate * tick))
    with Runtime() as rt:
        stages = build_stages(rt, modules)
        sim_t = 0.0
        deadline = time.monotonic() + seconds if seconds > 0 else float("inf")
        live = Live(render(stages, state), console=console, refresh_per_second=4,
                    transient=False) if console.is_terminal else None
        try:
            if live:
                live.start()
            last_print = time.monotonic()
            while time.monotonic() < deadline:
                t0 = time.monotonic()
                frames = []
                for _ in range(per_tick):
                    frames += [Message(topic, frame) for topic, frame in field_.tick(sim_t)]
                    sim_t += SIM_SECONDS_PER_TICK / per_tick
                step(stages, frames, state)
                if live:
                    live.update(render(stages, state))
                elif time.monotonic() - last_print >= 2:
                    last_print = time.monotonic()
                    console.print(f"{state.readings:,} readings, {state.alert_count} alerts, "
                                  f"dead letters: " + ", ".join(f"{n}={s.dead}" for n, s in stages.items()))
                time.sleep(max(0.0, tick - (time.monotonic() - t0)))
        except KeyboardInterrupt:
            pass
        finally:
            if live:
                live.stop()
            else:
                console.print(render(stages, state))
            for s in stages.values():
                s.container.stop()
    return state
