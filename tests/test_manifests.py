"""Manifests: validation with file, document, field path and reason; every problem at once."""

from __future__ import annotations

import json

import pytest

from iotwasm.node.manifests import Deployment, ManifestError, Route, json_schema, load_path, parse_documents

GOOD = """
apiVersion: iotwasm.io/v1
kind: Deployment
metadata: {name: filter}
spec:
  module: m.wasm
  replicas: 2
  resources: {memory: 16Mi, fuel: 10M, timeout: 50ms}
  capabilities:
    host: [log, kv]
    topics: {subscribe: ["sensors/#"], publish: ["out/#"]}
  config: {min: 10, max: 30.5, strict: true}
---
apiVersion: iotwasm.io/v1
kind: Route
metadata: {name: r1}
spec:
  source: {mqtt: {topic: "devices/{device}/frame", qos: 1}}
  steps: [filter]
  sinks:
    - mqtt: {topic: "alerts/{device}"}
    - store: {table: readings}
"""


def test_good_manifests_parse_with_defaults():
    dep, route = parse_documents(GOOD, "good.yaml")
    assert isinstance(dep, Deployment) and isinstance(route, Route)
    lim = dep.limits()
    assert (lim.memory, lim.fuel, lim.timeout_ms) == (16 * 2**20, 10_000_000, 50)
    caps = dep.capabilities()
    assert caps.host == {"log", "kv", "config"}  # config (only this manifest's) is always granted
    assert caps.config == {"min": "10", "max": "30.5", "strict": "true"}
    assert route.spec.batch.max_size == 100 and route.spec.queue.overflow == "block"
    assert route.spec.sinks[0].store_and_forward is True
    assert route.spec.source.type == "mqtt"


def test_every_problem_is_reported_with_its_field_path():
    bad = GOOD.replace("replicas: 2", "replicas: 0").replace("memory: 16Mi", "memory: 16Qi") \
        .replace("qos: 1", "qos: 2").replace("name: r1", "name: R_1").replace("host: [log, kv]", "host: [log, net]")
    with pytest.raises(ManifestError) as e:
        parse_documents(bad, "bad.yaml")
    problems = e.value.problems
    assert "bad.yaml#1 (Deployment filter) spec.replicas: Input should be greater than or equal to 1" in problems
    assert any(p.startswith("bad.yaml#1 (Deployment filter) spec.resources: cannot read size '16Qi'") for p in problems)
    assert any(p.startswith("bad.yaml#1 (Deployment filter) spec.capabilities.host[1]:") for p in problems)
    assert "bad.yaml#2 (Route R_1) spec.source.mqtt.qos: Input should be 0 or 1" in problems
    assert any(p.startswith("bad.yaml#2 (Route R_1) metadata.name: must be lowercase") for p in problems)
    assert len(problems) == 5


@pytest.mark.parametrize("timeout,shown", [('"0"', "'0'"), ("0", "0"), ("0s", "'0s'"), ("none", "'none'"),
                                           ("unlimited", "'unlimited'"), ("-1s", "'-1s'"), ("~", "None")])
def test_a_timeout_meaning_no_limit_is_refused_naming_the_field(timeout, shown):
    text = ("apiVersion: iotwasm.io/v1\nkind: Deployment\nmetadata: {name: x}\n"
            f"spec: {{module: m.wasm, resources: {{timeout: {timeout}}}}}")
    with pytest.raises(ManifestError) as e:
        parse_documents(text, "f.yaml")
    assert e.value.problems == [f"f.yaml#1 (Deployment x) spec.resources.timeout: timeout {shown} is not a "
                                f"time limit; every call needs a positive one, such as 50ms or 2s"
                                + (" (leave the field out for 1s)" if timeout == "~" else "")]


def test_restart_backoff_must_be_one_a_container_can_follow():
    text = ("apiVersion: iotwasm.io/v1\nkind: Deployment\nmetadata: {name: x}\n"
            "spec: {module: m.wasm, restartPolicy: {backoff: 0s}}")
    with pytest.raises(ManifestError) as e:
        parse_documents(text, "f.yaml")
    assert e.value.problems == ["f.yaml#1 (Deployment x) spec.restartPolicy: restart policy: backoff needs "
                                "0 < initial (0.0) <= maximum (60.0)"]


@pytest.mark.parametrize("text,needle", [
    ("apiVersion: iotwasm.io/v1\nkind: Pod\nmetadata: {name: x}\nspec: {}", "kind: must be one of Deployment, Route"),
    ("- just\n- a list", "a manifest must be a mapping"),
    ("key: [unclosed", "not valid YAML"),
    ("apiVersion: v2\nkind: Deployment\nmetadata: {name: x}\nspec: {module: m.wasm}", "apiVersion: Input should be 'iotwasm.io/v1'"),
    ("apiVersion: iotwasm.io/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {module: m.wasm, colour: red}",
     "spec.colour: Extra inputs are not permitted"),
    ("apiVersion: iotwasm.io/v1\nkind: Route\nmetadata: {name: x}\nspec: {source: {}, sinks: [{log: {}}]}",
     "spec.source: a source needs exactly one of"),
    ("apiVersion: iotwasm.io/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {module: m.wasm, replicas: 2, weights: [1]}",
     "weights has 1 entries for 2 replicas"),
])
def test_single_problems(text, needle):
    with pytest.raises(ManifestError) as e:
        parse_documents(text, "f.yaml")
    assert any(needle in p for p in e.value.problems), e.value.problems
    assert all(p.startswith("f.yaml") for p in e.value.problems)


def test_directory_loading_reports_all_files_and_duplicates(tmp_path):
    (tmp_path / "a.yaml").write_text(GOOD)
    (tmp_path / "b.yml").write_text(GOOD.split("---")[0])
    (tmp_path / "c.yaml").write_text("kind: Nope")
    (tmp_path / "ignored.txt").write_text("kind: Nope")
    with pytest.raises(ManifestError) as e:
        load_path(tmp_path)
    assert len(e.value.problems) == 2
    assert any("c.yaml#1" in p for p in e.value.problems)
    assert "Deployment filter is defined twice" in e.value.problems


def test_json_schema_is_published_and_current():
    from pathlib import Path

    schema = json_schema()
    assert set(schema["discriminator"]["mapping"]) == {"Deployment", "Route", "Rule"}
    published = Path(__file__).parent.parent / "docs" / "manifest.schema.json"
    assert json.loads(published.read_text()) == schema, "run: iotwasm schema > docs/manifest.schema.json"


def test_demo_manifests_are_valid():
    from pathlib import Path

    ms = load_path(Path(__file__).parent.parent / "examples" / "greenhouse")
    assert {m.kind for m in ms} == {"Deployment", "Route", "Rule"}


def test_a_file_with_an_alias_bomb_or_deep_nesting_is_refused_in_a_line(tmp_path):
    """The node's file watcher reads manifests with the same bounded loader as the API."""
    anchors = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    anchors += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    (tmp_path / "bomb.yaml").write_text("apiVersion: iotwasm.io/v1\nkind: Deployment\nx:\n  " + "\n  ".join(anchors)
                                        + "\nmetadata: {name: *a9}\nspec: {module: m.wasm}\n")
    (tmp_path / "deep.yaml").write_text("a:\n  " + "- " * 3000 + "x\n")
    (tmp_path / "self.yaml").write_text("a: &a [*a]\n")
    (tmp_path / "long.yaml").write_text(GOOD.split("---")[0].replace("name: filter", "name: " + "x" * 100_000))
    with pytest.raises(ManifestError) as e:
        load_path(tmp_path)
    bomb, deep, long, recursive = sorted(e.value.problems)
    assert bomb == (f"{tmp_path}/bomb.yaml:10:7: refused: expands to more than 4,194,304 values and characters "
                    "(aliases counted in full)")
    assert deep == f"{tmp_path}/deep.yaml:2:129: refused: nested deeper than 64 levels"
    assert recursive == f"{tmp_path}/self.yaml:1:4: refused: nested deeper than 64 levels (aliases followed)"
    assert long.startswith(f"{tmp_path}/long.yaml#1 (Deployment {'x' * 80}… (100,000 characters)) metadata.name")
    assert len(long) < 400
