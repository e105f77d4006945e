"""`iotwasm new | build | test` for the component languages, Python (componentize-py) and
JavaScript (componentize-qjs), as a user runs them from a clean directory, with the same
samples as the C, Rust and AssemblyScript templates; the build cache keyed by the sources'
digest; the built modules in a route on a real node.

Component builds take seconds (a Python one links CPython), so every project is created and
built once per module (`projects`) and the tests share them. The build and compile caches
start empty (XDG_CACHE_HOME in a temporary directory): the first build of each template really
runs the toolchain."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from apinode import ApiNode, wait_for

CLI = [sys.executable, "-m", "iotwasm.cli.main"]
LANGS = ("python", "js")
TEMPLATES = ("filter", "transform", "decoder", "aggregate")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """XDG_CACHE_HOME of every command here: $XDG_CACHE_HOME/iotwasm/{components,compiled}."""
    return tmp_path_factory.mktemp("xdg-cache")


def iotwasm(*args: str, cwd: Path, cache: Path, env: dict | None = None,
            ok: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([*CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=600, check=False,
                       env={**os.environ, "COLUMNS": "200", "XDG_CACHE_HOME": str(cache),
                            **(env or {})})
    if ok:
        assert r.returncode == 0, f"iotwasm {' '.join(args)}: {r.stdout}{r.stderr}"
    return r


@pytest.fixture(scope="module")
def projects(tmp_path_factory, cache) -> dict[tuple[str, str], tuple[Path, subprocess.CompletedProcess]]:
    """(lang, template) -> (project directory, the output of its first `iotwasm build`)."""
    root = tmp_path_factory.mktemp("projects")
    made = {}
    for lang in LANGS:
        for template in TEMPLATES:
            name = f"{lang}-{template}"
            r = iotwasm("new", name, "--lang", lang, "--template", template, cwd=root, cache=cache)
            assert f"created {name}" in r.stdout
            made[lang, template] = (root / name, iotwasm("build", cwd=root / name, cache=cache))
    return made


@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize("lang", LANGS)
def test_new_build_test_from_a_clean_directory(projects, cache, lang, template):
    project, built = projects[lang, template]
    name = project.name
    assert {p.name for p in project.iterdir()} == {
        "README.md", "manifest.yaml", "samples.yaml", ".gitignore",
        "main.py" if lang == "python" else "index.js", f"{name}.wasm", f"{name}.wasm.sha256"}
    assert len((project / "README.md").read_text().strip().splitlines()) == 5
    wasm = (project / f"{name}.wasm").read_bytes()
    assert wasm[:8] == b"\0asm\x0d\0\x01\0"   # a component, not a core module
    digest = (project / f"{name}.wasm.sha256").read_text().split()[0]
    assert hashlib.sha256(wasm).hexdigest() == digest and f"sha256:{digest}" in built.stdout
    r = iotwasm("test", cwd=project, cache=cache)
    assert r.stdout.strip().endswith(" passed, 0 failed") and "FAIL" not in r.stdout, r.stdout
    assert r.stdout.count("PASS") >= 3
    assert f"log: {template} ready" in r.stdout   # the module's setup ran, with its log granted


def test_the_samples_are_those_of_the_other_languages(projects, tmp_path, cache):
    """Same samples and manifest as a C project of the same name, but for the limits a
    component needs."""
    for lang in LANGS:
        for template in TEMPLATES:
            project, _ = projects[lang, template]
            c = tmp_path / lang / project.name
            iotwasm("new", project.name, "--lang", "c", "--template", template, "--dir", str(c.parent),
                    cwd=tmp_path, cache=cache)
            assert (project / "samples.yaml").read_text() == (c / "samples.yaml").read_text()
            ours = (project / "manifest.yaml").read_text().splitlines()
            theirs = (c / "manifest.yaml").read_text().splitlines()
            assert len(ours) == len(theirs)
            assert [a for a, b in zip(ours, theirs) if a != b] == [
                "  resources: {memory: 64Mi, fuel: 2G, timeout: 1s}"]


def test_a_wrong_expectation_fails_with_a_readable_diff(projects, cache, tmp_path):
    project = tmp_path / "strict"
    shutil.copytree(projects["js", "transform"][0], project)
    samples = project / "samples.yaml"
    samples.write_text(samples.read_text().replace('"value":212', '"value":213'))
    r = iotwasm("test", cwd=project, cache=cache, ok=False)
    assert r.returncode == 1
    assert "FAIL integers too" in r.stdout
    assert '-output: topic (default): {"value":213}' in r.stdout
    assert '+output: topic (default): {"value":212}' in r.stdout
    assert r.stdout.strip().endswith("3 passed, 1 failed")


def _entries(cache: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (cache / "iotwasm" / "components").iterdir()}


@pytest.mark.parametrize("lang", LANGS)
def test_an_unchanged_project_is_not_rebuilt(projects, cache, lang):
    """The component comes from the build cache, keyed by the digest of the sources, SDK, WIT,
    granted capabilities and toolchain version: no new entry, the entry untouched, same bytes."""
    project, _ = projects[lang, "filter"]
    module = project / f"{project.name}.wasm"
    before, first = _entries(cache), module.read_bytes()
    module.unlink()
    iotwasm("build", cwd=project, cache=cache)
    assert _entries(cache) == before and module.read_bytes() == first


def test_a_changed_source_or_capability_is_rebuilt(projects, cache, tmp_path):
    project = tmp_path / "js-filter"
    shutil.copytree(projects["js", "filter"][0], project)
    before = _entries(cache)
    source = project / "index.js"
    source.write_text(source.read_text() + "\n// edited\n")
    iotwasm("build", cwd=project, cache=cache)
    after = _entries(cache)
    assert len(after) == len(before) + 1 and before.items() <= after.items()
    # a capability granted in the manifest changes the component's imports: a new build
    manifest = project / "manifest.yaml"
    manifest.write_text(manifest.read_text().replace("host: [log]", "host: [log, kv]"))
    iotwasm("build", cwd=project, cache=cache)
    assert len(_entries(cache)) == len(after) + 1
    assert "passed, 0 failed" in iotwasm("test", cwd=project, cache=cache).stdout


def test_the_languages_are_listed_as_ready_with_every_template(tmp_path, cache):
    listed = iotwasm("new", "--list", cwd=tmp_path, cache=cache).stdout.splitlines()
    for lang in LANGS:
        row = next(line for line in listed if line.startswith(lang + " "))
        assert " ready " in row and "not available" not in row
        assert all(t in row for t in ("filter", "transform", "decoder")), row


def test_a_missing_javascript_toolchain_is_one_line_saying_what_to_install(projects, cache, tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    r = iotwasm("build", cwd=projects["js", "filter"][0], cache=tmp_path / "empty-cache",
                env={"PATH": str(empty)}, ok=False)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "error: js: node not found on PATH; install Node.js 20 (Debian: apt-get install nodejs npm)"]


def test_a_missing_componentize_py_is_one_line_saying_what_to_install(tmp_path, monkeypatch):
    """componentize-py is looked up beside the interpreter (a venv's bin/) and on PATH."""
    from iotwasm.toolchain import ToolchainMissing, build, new_project, open_project

    project = new_project("m", "python", parent=tmp_path)
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(sys, "executable", str(empty / "python3"))
    with pytest.raises(ToolchainMissing) as e:
        build(open_project(project))
    assert str(e.value) == ("python: componentize-py not found; install it: pip install "
                            "componentize-py==0.25.1 (the `components` extra; make setup does)")
    assert not (project / "m.wasm").exists()


# -- on a node -------------------------------------------------------------------------------

def stored(node: ApiNode, table: str) -> list[bytes]:
    db = node.data / "store.db"
    if not db.exists():
        return []
    with sqlite3.connect(db) as c:
        try:
            return [row[0] for row in c.execute(f'SELECT payload FROM "{table}" ORDER BY id')]
        except sqlite3.OperationalError:  # no such table yet
            return []


def test_built_modules_run_in_a_route_on_a_node(projects, cache, tmp_path):
    """`iotwasm dev --once` (build, samples, push, apply) puts each filter on a node, whose
    route then filters posted readings; logs and counters are the module's."""
    # the node's compile cache starts with what `iotwasm test` compiled (entries are still
    # checked before use): a Python component takes seconds to compile
    (tmp_path / "data" / "cache").mkdir(parents=True)
    for entry in (cache / "iotwasm" / "compiled").glob("*.cwasm"):
        shutil.copy(entry, tmp_path / "data" / "cache" / entry.name)
    node = ApiNode(tmp_path).start()
    try:
        env = {"IOTWASM_URL": node.url, "IOTWASM_TOKEN": node.admin_token,
               "IOTWASM_CONFIG": str(tmp_path / "config.yaml")}
        for lang in LANGS:
            project = projects[lang, "filter"][0]
            name = project.name
            r = iotwasm("dev", "--once", cwd=project, cache=cache, env=env)
            assert f"deployed {name}:dev-" in r.stdout and "deployment " + name in r.stdout
            node.ingest(f"/{name}", "d1", [b'{"device":"d1","value":21.5}', b'{"device":"d1","value":99}',
                                           b'{"device":"d1","value":12}', b"not json"])
            table = name.replace("-", "_")
            rows = wait_for(lambda t=table: len(stored(node, t)) >= 2 and stored(node, t), 60, f"{name} output")
            assert rows == [b'{"device":"d1","value":21.5}', b'{"device":"d1","value":12}']
            dep = wait_for(lambda n=name: (d := node.admin.get(f"/v1/deployments/{n}").json())
                           .get("dead_letters", 0) >= 1 and d, 30, f"{name} dead letter")
            # counters: the four readings went through the module; two passed, one dead letter
            assert (dep["messages"], dep["outputs"], dep["dead_letters"]) == (4, 2, 1)
            assert dep["module_digest"] == "sha256:" + (project / f"{name}.wasm.sha256").read_text().split()[0]
            logs = iotwasm("logs", name, cwd=project, cache=cache, env=env).stdout
            assert "filter ready" in logs
        assert httpx.get(node.url + "/readyz").status_code == 200
    finally:
        node.stop()
