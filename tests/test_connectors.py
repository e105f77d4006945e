"""The connector interface: built-in kinds in the registry, a third-party connector found
through a real ``iotwasm.connectors`` entry point (a distribution installed into a directory on
sys.path, discovered by importlib.metadata), its configuration checked at manifest time, its
health and counters in describe, and a missing package named in one line."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from pathlib import Path

import pytest

from iotwasm.errors import ConfigError
from iotwasm.node.manifests import ManifestError, parse_documents
from iotwasm.pipeline import connectors

from nodesite import started, wait_for, write

PLUGIN = '''
"""acme-counter: a source that offers `count` JSON messages, and a sink that needs a package
that is not installed."""
import asyncio
from pydantic import BaseModel, ConfigDict, Field
from iotwasm.message import Message
from iotwasm.pipeline.connectors import Connector, require


class CounterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    count: int = Field(ge=1, le=1000)
    topic: str = "acme/{device}"


class CounterSource:
    def __init__(self, cfg, runner):
        self.cfg, self.runner, self.offered, self._task = cfg, runner, 0, None

    async def start(self):
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self):
        for i in range(self.cfg.count):
            dev = f"d{i % 3}"
            await self.runner.offer(Message(self.cfg.topic.replace("{device}", dev),
                                            b'{"n": %d}' % i), {"device": dev})
            self.offered += 1

    def status(self):
        return {"health": "ok", "counters": {"offered": self.offered}}

    def retarget(self, runner):
        self.runner = runner

    def pause(self):
        pass

    async def stop(self, grace=5.0):
        if self._task:
            self._task.cancel()

    remove = stop


async def build_counter(ctx, cfg, runner):
    return CounterSource(cfg, runner)


class NeedsConfig(BaseModel):
    pass


async def build_needs(ctx, cfg, name, outbox):
    require(NEEDS_REAL)


NEEDS_REAL = Connector("acme-needs", "sink", NeedsConfig, build_needs, "nothing",
                       requires=(("acme_not_installed_xyz", "acme-lib"),))

CONNECTORS = [
    Connector("acme-counter", "source", CounterConfig, build_counter,
              "Offers and forgets: nothing to acknowledge.", pattern=lambda cfg: cfg.topic),
    NEEDS_REAL,
]
'''


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    """A distribution `acme-connectors` installed the way pip lays one out: the package and a
    .dist-info with METADATA and entry_points.txt, in a directory put on sys.path."""
    site = tmp_path_factory.mktemp("site")
    (site / "acme_connectors").mkdir()
    (site / "acme_connectors" / "__init__.py").write_text(PLUGIN)
    info = site / "acme_connectors-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-connectors\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent("""
        [iotwasm.connectors]
        acme = acme_connectors:CONNECTORS
        broken = acme_connectors:NO_SUCH_NAME
    """))
    sys.path.insert(0, str(site))
    connectors.registry.discover(again=True)
    yield site
    sys.path.remove(str(site))


def route(source: str, sink: str = "{store: {table: out}}", name: str = "r") -> str:
    return f"""
apiVersion: iotwasm.io/v1
kind: Route
metadata: {{name: {name}}}
spec:
  source: {source}
  sinks: [{sink}]
"""


def test_builtin_kinds_are_registered_with_their_semantics():
    reg = connectors.registry
    assert {"mqtt", "nats", "bus", "http", "sensors", "modbus"} <= set(reg.kinds("source"))
    assert {"mqtt", "nats", "bus", "store", "webhook", "log", "postgres"} <= set(reg.kinds("sink"))
    for role in ("source", "sink"):
        for kind in reg.kinds(role):
            assert reg.get(role, kind).semantics.strip(), f"{role} {kind} states no semantics"
    with pytest.raises(ConfigError, match=r"unknown source connector 'serial'; known: .*modbus"):
        reg.get("source", "serial")


def test_a_plugin_is_found_through_its_entry_point(plugin):
    c = connectors.registry.get("source", "acme-counter")
    assert c.role == "source" and type(c).__module__ == "iotwasm.pipeline.connectors.base"
    # a broken entry point is remembered with its reason and named when a manifest uses it
    assert "NO_SUCH_NAME" in connectors.registry.broken["broken"]
    with pytest.raises(ConfigError, match="entry point failed: AttributeError"):
        connectors.registry.get("source", "broken")


def test_plugin_configuration_is_checked_when_the_manifest_is_read(plugin):
    (r,) = parse_documents(route("{connector: {kind: acme-counter, config: {count: 5}}}"))
    assert r.spec.source.type == "acme-counter" and r.spec.source.config.count == 5
    with pytest.raises(ManifestError) as e:
        parse_documents(route("{connector: {kind: acme-counter, config: {count: 0, colour: red}}}"), "x.yaml")
    (problem,) = e.value.problems
    assert problem.startswith("x.yaml#1 (Route r) spec.source: source connector 'acme-counter' config.count:")
    assert "(and 1 more)" in problem and "\n" not in problem
    with pytest.raises(ManifestError, match=r"spec.source: unknown source connector 'acme-countr'"):
        parse_documents(route("{connector: {kind: acme-countr}}"))


def test_builtin_configuration_errors_name_the_connector_and_field():
    bad = "{modbus: {devices: [{name: p1, host: 127.0.0.1, registers: [{name: t, address: 0, type: int24}]}]}}"
    with pytest.raises(ManifestError) as e:
        parse_documents(route(bad), "plc.yaml")
    (problem,) = e.value.problems
    assert problem.startswith("plc.yaml#1 (Route r) spec.source.modbus.devices[0].registers[0].type: Input should be")


def test_a_plugin_source_feeds_a_route_and_reports_its_counters(plugin, tmp_path: Path):
    mdir = tmp_path / "manifests"
    mdir.mkdir()

    async def main():
        write(mdir, "r.yaml", route("{connector: {kind: acme-counter, config: {count: 30}}}"))
        node = await started(tmp_path, mdir)
        try:
            await wait_for(lambda: node.store.count("out") == 30, what="30 rows from the plugin")
            rows = node.store.query("out", limit=100)
            assert sorted(r["payload"]["n"] for r in rows) == list(range(30))
            status = node.routes["r"].connectors()
            assert status["source"] == {"kind": "acme-counter", "health": "ok", "counters": {"offered": 30}}
            assert status["sinks"][0]["kind"] == "store"
            from iotwasm.api.metrics import exposition
            text = exposition(node).decode()
            src = 'index="0",kind="acme-counter",namespace="default",role="source",route="r"'
            assert f"iotwasm_connector_healthy{{{src}}} 1.0" in text.splitlines()
            assert f'iotwasm_connector_events_total{{counter="offered",{src}}} 30.0' in text.splitlines()
        finally:
            await node.shutdown()

    asyncio.run(main())


def test_a_missing_package_is_one_line_on_the_route(plugin, tmp_path: Path):
    mdir = tmp_path / "manifests"
    mdir.mkdir()

    async def main():
        write(mdir, "r.yaml", route("{connector: {kind: acme-counter, config: {count: 1}}}",
                                    sink="{connector: {kind: acme-needs}}"))
        node = await started(tmp_path, mdir)
        try:
            problems = await node.sync()
            assert problems == ["Route r: the acme-needs sink needs the Python package 'acme-lib', "
                                "which is not installed (pip install acme-lib)"]
            assert "r" not in node.routes
        finally:
            await node.shutdown()

    asyncio.run(main())


def test_route_options_reach_the_sinks_built_through_the_registry(tmp_path: Path):
    """A sink's circuitBreaker and retry, the node's twin sink and a sensors source's heat
    wave all go through the connector registry like every other kind."""
    mdir = tmp_path / "manifests"
    mdir.mkdir()
    write(mdir, "r.yaml", textwrap.dedent("""\
        apiVersion: iotwasm.io/v1
        kind: Route
        metadata: {name: r}
        spec:
          source: {sensors: {devices: 2, rate: 1, heatWave: 12, heatWaveEvery: 600, heatWaveLasting: 60}}
          sinks:
            - {webhook: {url: "http://127.0.0.1:9/x"}, storeAndForward: false,
               retry: {attempts: 4, backoff: 10ms, maxBackoff: 40ms}, circuitBreaker: {enabled: false}}
            - {bus: {topic: "out/{device}"}, circuitBreaker: {failures: 7}}
            - {twin: {key: frame}}
        """))

    async def main():
        node = await started(tmp_path, mdir)
        try:
            await wait_for(lambda: "r" in node.routes, what="the route")
            rec = node.routes["r"]
            hook, bus, twin = rec.sinks
            assert hook.breaker is None and hook.retries == 3
            assert (hook.retry_backoff.initial, hook.retry_backoff.maximum) == (0.01, 0.04)
            assert bus.breaker is not None and bus.breaker.threshold == 7
            assert type(twin).__name__ == "TwinSink" and twin.namespace == "default" and twin.key == "frame"
            assert rec.source.field.heat_wave_c == 12 and rec.source.field.heat_wave_s == 60
            assert [s["kind"] for s in rec.connectors()["sinks"]] == ["webhook", "bus", "twin"]
        finally:
            await node.shutdown()

    asyncio.run(main())


def test_cancel_and_wait_ends_the_tasks_and_logs_one_that_had_failed(caplog):
    from iotwasm.pipeline.connectors.base import cancel_and_wait

    async def main():
        ended: list[str] = []

        async def reading():
            try:
                await asyncio.sleep(3600)
            finally:
                await asyncio.sleep(0.01)    # winding down takes a moment: stop waits for it
                ended.append("reading")

        async def failing():
            raise OSError("device went away")

        loop = asyncio.get_running_loop()
        reader = loop.create_task(reading(), name="reader")
        failed = loop.create_task(failing(), name="failer")
        done = loop.create_task(asyncio.sleep(0), name="done")
        await asyncio.sleep(0.01)
        assert failed.done() and done.done() and not reader.done()
        with caplog.at_level("ERROR", logger="iotwasm.supervise"):
            await cancel_and_wait(reader, None, failed, done)
        assert reader.cancelled() and ended == ["reading"]
        errors = [r for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == 1 and "failer" in errors[0].getMessage()
        assert "OSError: device went away" in errors[0].getMessage()
        await cancel_and_wait()     # nothing to stop

    asyncio.run(main())


def test_cancel_and_wait_lets_its_callers_own_cancellation_through():
    from iotwasm.supervise import cancel_and_wait

    async def main():
        release = asyncio.Event()

        async def slow_to_stop():
            try:
                await asyncio.sleep(3600)
            finally:
                await release.wait()      # winds down only when told

        task = asyncio.get_running_loop().create_task(slow_to_stop())
        await asyncio.sleep(0)
        stopper = asyncio.get_running_loop().create_task(cancel_and_wait(task))
        await asyncio.sleep(0)
        stopper.cancel()                  # the one stopping is itself cancelled
        with pytest.raises(asyncio.CancelledError):
            await stopper
        release.set()
        await asyncio.wait([task])
        assert task.cancelled()

    asyncio.run(main())
