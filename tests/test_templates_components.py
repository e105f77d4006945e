"""Every Python and JavaScript template builds into a component and does what its samples say."""

from __future__ import annotations

import json

import pytest
import yaml

from iotwasm.container import RestartPolicy, WasmContainer
from iotwasm.engine import Capabilities, Limits
from iotwasm.message import Message

from components import LANGS, cached_runtime, component
from iotwasm.componentize import TEMPLATES

CASES = [(lang, t.name) for lang in LANGS for t in sorted((TEMPLATES / lang).iterdir())]


@pytest.fixture(scope="module")
def rt():
    runtime = cached_runtime()
    yield runtime
    runtime.close()


@pytest.mark.parametrize("lang, template", CASES)
def test_template_builds_and_matches_its_samples(rt, lang, template):
    project = TEMPLATES / lang / template
    dep = next(d for d in yaml.safe_load_all((project / "deployment.yaml").read_text())
               if d["kind"] == "Deployment")
    spec = dep["spec"]
    caps = Capabilities.grant(*spec["capabilities"]["host"], "config",
                              config={k: str(v) for k, v in (spec.get("config") or {}).items()})
    limits = Limits.parse(memory=spec["resources"]["memory"], timeout="2s")
    wasm = component(lang, project)
    c = WasmContainer(template, rt.load(wasm, limits=limits), runtime=rt, limits=limits,
                      capabilities=caps, restart=RestartPolicy(mode="never")).start()
    try:
        samples = [json.loads(line) for line in (project / "samples.jsonl").read_text().splitlines()]
        msgs = [Message(s["topic"], (s["payload"] if isinstance(s["payload"], str)
                                     else json.dumps(s["payload"])).encode()) for s in samples]
        r = c.process(msgs)
        got = [{"input": o.index, **({"topic": o.topic} if o.topic else {}),
                "payload": json.loads(o.payload)} for o in r.outputs]
        got += [{"input": d.index, "reject": str(d.error).split(": ", 1)[1]} for d in r.dead_letters]
        expected = [json.loads(line) for line in (project / "expected.jsonl").read_text().splitlines()]
        assert got == expected
    finally:
        c.stop()
