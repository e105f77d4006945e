"""Components (Python and JavaScript guests) run like core modules: the same limits, deny-by-
default linking, containment of traps, loops and memory exhaustion, caching and inspect."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from iotwasm.container import RestartPolicy, WasmContainer
from iotwasm.container.lifecycle import State
from iotwasm.engine import Capabilities, HostContext, Limits, Runtime, prepare
from iotwasm.errors import AbiError, CapabilityDenied, InitError
from iotwasm.message import Message

from components import LANGS, ROOT, cached_runtime, component

LIMITS = Limits.parse(memory="64Mi", timeout="300ms")
#: for cases that must end by themselves: Python in wasm recursing into its stack limit takes
#: ~260 ms on a quiet machine, more than 300 ms on a loaded one (the epoch is wall time)
PATIENT = Limits.parse(memory="64Mi", timeout="5s")


@pytest.fixture(scope="module")
def rt():
    runtime = cached_runtime()
    yield runtime
    runtime.close()


@pytest.fixture(scope="module", params=LANGS)
def misbehave(request, rt):
    return request.param, rt.load(component(request.param, "misbehave"), limits=LIMITS)


def msgs(*payloads: str) -> list[Message]:
    return [Message("in/d1", p.encode()) for p in payloads]


def container(compiled, rt, logs=None, limits=LIMITS, **kw) -> WasmContainer:
    caps = Capabilities.grant("log", "kv", "config")
    return WasmContainer(compiled.name, compiled, runtime=rt, limits=limits, capabilities=caps,
                         restart=RestartPolicy(mode="never"),
                         on_log=(lambda n, lvl, text: logs.append(text)) if logs is not None else None,
                         **kw).start()


def test_an_interface_that_was_not_granted_is_refused_at_load_with_its_name(misbehave):
    _, compiled = misbehave
    with pytest.raises(CapabilityDenied) as e:
        prepare(compiled, LIMITS, HostContext("m", Capabilities.grant("config", "kv")))
    assert "imports iotwasm:module/log@1.0.0, which needs capability 'log' (not granted)" in str(e.value)
    with pytest.raises(CapabilityDenied, match="iotwasm:module/kv@1.0.0"):
        prepare(compiled, LIMITS, HostContext("m", Capabilities.grant("config", "log")))


@pytest.mark.parametrize("cmd, kind", [("loop", "timeout"), ("oom", "memory_limit"),
                                       ("deep", "stack_limit")])
def test_traps_loops_and_memory_exhaustion_are_contained(misbehave, rt, cmd, kind):
    lang, compiled = misbehave
    if lang == "js" and cmd == "oom":
        kind = None  # QuickJS ends in its own allocator's abort or its OOM error: either counts
    c = container(compiled, rt, limits=LIMITS if cmd == "loop" else PATIENT)
    try:
        r = c.process(msgs("ok:a", cmd, "ok:b"))
        assert [(o.index, o.payload) for o in r.outputs] == [(0, b"ok:a"), (2, b"ok:b")]
        assert [d.index for d in r.dead_letters] == [1]
        err = r.dead_letters[0].error
        if kind is not None:
            assert err.kind == kind, err
        else:
            assert err.kind in ("memory_limit", "trap", "timeout"), err
        assert c.state == State.RUNNING
        assert c.stats().instances[0].recycles >= 1  # the instance was replaced
        again = c.process(msgs("ok:c"))  # and the new one works
        assert [o.payload for o in again.outputs] == [b"ok:c"]
    finally:
        c.stop()


def test_effects_committed_before_a_trap_are_not_repeated(misbehave, rt):
    _, compiled = misbehave
    logs: list[str] = []
    c = container(compiled, rt, logs=logs, limits=PATIENT)
    try:
        r = c.process(msgs("log:1", "ok:2", "log:3", "deep", "log:5"))
        assert [o.index for o in r.outputs] == [0, 1, 2, 4]
        assert [d.index for d in r.dead_letters] == [3]
        assert logs == ["log:1", "log:3", "log:5"]  # once each, though the batch was redone
        assert c.host.kv.get(b"calls") == b"3"
    finally:
        c.stop()


def test_rejects_topics_and_binary_payloads_cross_the_boundary(misbehave, rt):
    _, compiled = misbehave
    c = container(compiled, rt)
    try:
        weird = Message("in/\x1f\u00e9/\x1e", b"ok:\xff\x1e\x1f\x00")
        r = c.process([*msgs("boom", "binary", "many:3"), weird, Message("in", "ok:\u00e9".encode())])
        assert [(d.index, d.error.kind) for d in r.dead_letters] == [(0, "guest_error")]
        assert "boom" in str(r.dead_letters[0].error)
        assert [(o.index, o.topic, o.payload) for o in r.outputs] == [
            (1, None, b"\xff\x00\x1e\x1f"), (2, "t/0", b"0"), (2, "t/1", b"1"), (2, "t/2", b"2"),
            (3, None, b"ok:\xff\x1e\x1f\x00"), (4, None, "ok:\u00e9".encode())]
    finally:
        c.stop()


def test_a_failing_setup_stops_the_container_from_starting(rt, tmp_path):
    for lang, src, name in [("python", "from iotwasm_sdk import handler, setup\n"
                             "setup(lambda: 1 / 0)\nhandler(lambda m: m)\n", "main.py"),
                            ("js", 'import { handler, setup } from "iotwasm-sdk";\n'
                             'setup(() => { throw new Error("no config"); });\n'
                             "handler((m) => m);\n", "index.js")]:
        project = tmp_path / lang / "badsetup"
        project.mkdir(parents=True)
        (project / name).write_text(src)
        compiled = rt.load(component(lang, project), limits=LIMITS)
        with pytest.raises(InitError, match="setup: (ZeroDivisionError|Error: no config)"):
            prepare(compiled, LIMITS, HostContext("b", Capabilities.grant("config"))).new_guest()


def test_inspect_shows_the_world(misbehave):
    lang, compiled = misbehave
    info = compiled.info
    assert info.abi == "component" and not info.problems
    imports = {f"{i.module}.{i.name}: {i.type}" for i in info.imports}
    assert "iotwasm:module/log@1.0.0.write: func(level: enum { debug, info, warn, error }, " \
           "message: string)" in imports
    assert "iotwasm:module/kv@1.0.0.set: func(key: string, value: string) -> bool" in imports
    assert not any("wasi:" in i for i in imports)  # built without WASI
    exports = {e.name: e.type for e in info.exports}
    assert exports["process"] == "func(batch: string) -> result<string, string>"
    out = subprocess.run([sys.executable, "-m", "iotwasm.cli.main", "inspect", "-o", "json",
                          str(component(lang, "misbehave"))], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    doc = json.loads(out)
    assert doc["abi"] == "component"
    assert "iotwasm:module/config@1.0.0.get: func(key: string) -> option<string>" in doc["imports"]


def test_a_component_without_the_processor_exports_is_refused(rt):
    wat = '(component (core module $m) (core instance (instantiate $m)))'
    compiled = rt.load(wat.encode().decode(), name="empty")
    assert compiled.info.abi == "component"
    assert "missing export 'setup'" in compiled.info.problems[0]
    with pytest.raises(AbiError, match="missing export 'setup'"):
        prepare(compiled, LIMITS, HostContext("e"))


def test_a_cached_compiled_component_is_loaded_not_compiled(tmp_path):
    wasm = component("js", "misbehave").read_bytes()
    with Runtime(cache_dir=tmp_path) as first:
        first.load(wasm, name="m")
        assert first.cache.misses == 1 and first.cache.hits == 0
    with Runtime(cache_dir=tmp_path) as second:
        compiled = second.load(wasm, name="m")
        assert second.cache.hits == 1 and second.cache.misses == 0
        g = prepare(compiled, LIMITS, HostContext("m", Capabilities.grant("log", "kv", "config"))
                    ).new_guest()
        assert [o.payload for o in g.process(msgs("ok:x")).outputs] == [b"ok:x"]
