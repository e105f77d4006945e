"""`iotwasm test`: a project's samples through its module in the real engine.

The module runs in a `WasmContainer` with the limits, capabilities and config of the project's
Deployment (manifest.yaml), all samples in one batch as a route would send them, and every
sample's outputs and dead letter are compared with what samples.yaml expects. A mismatch is
shown as a unified diff of the expected and the actual outcome of that sample.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..container import RestartPolicy, WasmContainer
from ..engine import Runtime
from ..errors import ConfigError
from ..message import BatchResult, Message
from ..node.manifests import Deployment, parse_documents
from .languages import cache_home
from .project import Project

MAX_SAMPLES_FILE = 4 * 1024 * 1024


@dataclass
class Expected:
    topic: str | None
    payload: Any          # a mapping/list (compared as JSON), str (exact text) or bytes


@dataclass
class Sample:
    name: str
    message: Message
    outputs: list[Expected]
    dead_letter: str | None


@dataclass
class SampleResult:
    sample: Sample
    outputs: list[tuple[str | None, bytes]]
    dead_letter: str | None
    diff: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.diff


@dataclass
class Report:
    results: list[SampleResult]
    logs: list[str]

    @property
    def failed(self) -> list[SampleResult]:
        return [r for r in self.results if not r.ok]


def _payload(spec: dict, where: str) -> bytes:
    if "payload_hex" in spec:
        try:
            return bytes.fromhex(str(spec["payload_hex"]))
        except ValueError:
            raise ConfigError(f"{where}: payload_hex is not hex") from None
    if "payload" not in spec:
        raise ConfigError(f"{where}: needs payload or payload_hex")
    p = spec["payload"]
    return p.encode() if isinstance(p, str) else json.dumps(p, separators=(",", ":")).encode()


def load_samples(path: Path) -> list[Sample]:
    where = str(path)
    try:
        if path.stat().st_size > MAX_SAMPLES_FILE:
            raise ConfigError(f"{where}: larger than {MAX_SAMPLES_FILE:,} bytes")
        docs = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{where}: not found (samples to test the module with)") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"{where}: cannot read: {e}") from None
    if not isinstance(docs, list) or not docs:
        raise ConfigError(f"{where}: expected a list of samples")
    samples = []
    for i, d in enumerate(docs, 1):
        at = f"{where} sample {i}"
        if not isinstance(d, dict):
            raise ConfigError(f"{at}: expected a mapping")
        unknown = set(d) - {"name", "topic", "payload", "payload_hex", "expect", "dead_letter"}
        if unknown:
            raise ConfigError(f"{at}: unknown field(s) {', '.join(sorted(unknown))}")
        expect = d.get("expect") or []
        if not isinstance(expect, list):
            raise ConfigError(f"{at}: expect must be a list of outputs")
        outs = []
        for j, out in enumerate(expect, 1):
            if not isinstance(out, dict):
                raise ConfigError(f"{at} output {j}: expected a mapping with payload")
            p: Any = out.get("payload")
            if "payload_hex" in out:
                try:
                    p = bytes.fromhex(str(out["payload_hex"]))
                except ValueError:
                    raise ConfigError(f"{at} output {j}: payload_hex is not hex") from None
            if p is None:
                raise ConfigError(f"{at} output {j}: needs payload or payload_hex")
            outs.append(Expected(out.get("topic"), p))
        dead = d.get("dead_letter")
        samples.append(Sample(str(d.get("name") or f"sample {i}"),
                              Message(str(d.get("topic") or "test"), _payload(d, at)), outs,
                              None if dead is None else str(dead)))
    return samples


def deployment_of(project: Project) -> Deployment:
    try:
        text = project.manifest.read_text()
    except OSError as e:
        raise ConfigError(f"{project.manifest}: cannot read: {e.strerror or e}") from None
    deps = [m for m in parse_documents(text, str(project.manifest)) if isinstance(m, Deployment)]
    for d in deps:
        if d.name == project.name:
            return d
    if len(deps) == 1:
        return deps[0]
    raise ConfigError(f"{project.manifest}: no Deployment named {project.name!r}")


def _show_payload(p: bytes) -> str:
    try:
        return p.decode()
    except UnicodeDecodeError:
        return "hex " + p.hex()


def _render(outputs: list[tuple[str | None, str]], dead: str | None) -> list[str]:
    lines = [f"output: topic {t or '(default)'}: {p}" for t, p in outputs] or ["no output"]
    lines.append(f"dead letter: {dead}" if dead is not None else "no dead letter")
    return lines


def _matches(e: Expected, topic: str | None, payload: bytes) -> bool:
    if e.topic is not None and e.topic != topic:
        return False
    if e.topic is None and topic is not None:
        return False
    if isinstance(e.payload, bytes):
        return e.payload == payload
    if isinstance(e.payload, str):
        return e.payload.encode() == payload
    try:
        return json.loads(payload) == e.payload
    except ValueError:
        return False


def compare(samples: list[Sample], result: BatchResult, module: str) -> list[SampleResult]:
    outs: dict[int, list[tuple[str | None, bytes]]] = {}
    for o in result.outputs:
        outs.setdefault(o.index, []).append((o.topic, o.payload))
    dead: dict[int, str] = {}
    for d in result.dead_letters:
        text = str(d.error)
        if d.error.module and d.error.function:   # "module:function: text" -> "text"
            text = text.removeprefix(f"{d.error.module}:{d.error.function}: ")
        dead[d.index] = text
    results = []
    for i, s in enumerate(samples):
        got = outs.get(i, [])
        r = SampleResult(s, got, dead.get(i))
        ok = (len(got) == len(s.outputs) and all(_matches(e, t, p) for e, (t, p) in zip(s.outputs, got))
              and r.dead_letter == s.dead_letter)
        if not ok:
            want = _render([(e.topic, e.payload.hex() if isinstance(e.payload, bytes) else
                             e.payload if isinstance(e.payload, str) else
                             json.dumps(e.payload, separators=(",", ":"))) for e in s.outputs],
                           s.dead_letter)
            have = _render([(t, _show_payload(p)) for t, p in got], r.dead_letter)
            r.diff = list(difflib.unified_diff(want, have, "expected", "actual", lineterm="", n=3))
        results.append(r)
    return results


def run_samples(project: Project, runtime: Runtime | None = None) -> Report:
    """Run the project's built module over its samples; the module must have been built."""
    samples = load_samples(project.samples)
    dep = deployment_of(project)
    if not project.module.is_file():
        raise ConfigError(f"{project.module}: not built (run iotwasm build)")
    logs: list[str] = []
    own = runtime is None
    # compiled code is cached on disk by digest and engine: a Python component takes seconds
    # to compile and tens of milliseconds to load from the cache
    rt = runtime or Runtime(cache_dir=cache_home() / "compiled")
    try:
        container = WasmContainer(dep.name, project.module, runtime=rt, limits=dep.limits(),
                                  capabilities=dep.capabilities(), restart=RestartPolicy(mode="never"),
                                  on_log=lambda name, level, text: logs.append(text))
        try:
            container.start()
            result = container.process([s.message for s in samples])
        finally:
            container.stop()
    finally:
        if own:
            rt.close()
    return Report(compare(samples, result, dep.name), logs)
