"""A Python and a JavaScript module run in a route on a node, one after the other."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from components import cached_runtime, example, seed_compile_cache
from nodesite import started, wait_for, write


def deployment(name: str, module: Path, lo: int, hi: int) -> str:
    return f"""
apiVersion: iotwasm.io/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  module: {module}
  config: {{min: {lo}, max: {hi}}}
  capabilities:
    topics: {{subscribe: ["in/#"], publish: ["in/#"]}}
"""


ROUTE = """
apiVersion: iotwasm.io/v1
kind: Route
metadata: {name: r}
spec:
  source: {bus: {topic: "in/{device}"}}
  steps: [py-filter, js-filter]
  sinks: [{store: {table: out}}]
"""


def test_python_and_javascript_modules_run_in_a_route_on_a_node(tmp_path: Path):
    py, js = example("python", "range_filter"), example("js", "range_filter")
    # The node's compile cache starts with what the tests compiled already (a Python
    # component takes seconds to compile); entries are still checked before use.
    with cached_runtime() as rt:
        for m in (py, js):
            rt.load(m)
    seed_compile_cache(tmp_path / "data" / "cache")
    mdir = tmp_path / "manifests"
    mdir.mkdir()

    async def main():
        write(mdir, "a.yaml", deployment("py-filter", py, 10, 30) + "---"
              + deployment("js-filter", js, 15, 40) + "---" + ROUTE)
        node = await started(tmp_path, mdir)
        try:
            assert node.deployments["py-filter"].handle.current.compiled.info.abi == "component"
            for i in range(40):
                await node.bus.publish(f"in/d{i % 4}", json.dumps({"value": i}).encode(), qos=1)
            for bad in (b"not json", b'{"value": "x"}'):
                await node.bus.publish("in/d9", bad, qos=1)
            await wait_for(lambda: node.store.count("out") == 16, what="16 readings in 15..30")
            await wait_for(lambda: len(node.state.dead_letters("r")) == 2, what="2 dead letters")
            values = sorted(row["payload"]["value"] for row in node.store.query("out"))
            assert values == list(range(15, 31))
            reasons = sorted(d["error"] for d in node.state.dead_letters("r"))
            assert reasons == ['py-filter:process: field "value" is not a number',
                               "py-filter:process: payload is not a JSON object"]
        finally:
            await node.shutdown()

    asyncio.run(main())
