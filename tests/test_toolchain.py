"""`iotwasm new | build | test | dev` with the real toolchains (clang, Debian's rustc and
cargo, asc from npm), each from a clean directory, as a user runs them; the built modules in a
route on a real node, hot-updated by `iotwasm dev`."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from apinode import ApiNode, wait_for

CLI = [sys.executable, "-m", "iotwasm.cli.main"]
LANGS = ("c", "rust", "assemblyscript")
TEMPLATES = ("filter", "transform", "decoder", "aggregate")


def iotwasm(*args: str, cwd: Path, env: dict | None = None, ok: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([*CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "COLUMNS": "200", **(env or {})})
    if ok:
        assert r.returncode == 0, f"iotwasm {' '.join(args)}: {r.stdout}{r.stderr}"
    return r


@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize("lang", LANGS)
def test_new_build_test_from_a_clean_directory(tmp_path, lang, template):
    name = f"my-{template}"
    r = iotwasm("new", name, "--lang", lang, "--template", template, cwd=tmp_path)
    assert f"created {name}" in r.stdout
    project = tmp_path / name
    assert {"README.md", "manifest.yaml", "samples.yaml", ".gitignore"} <= {p.name for p in project.iterdir()}
    assert len((project / "README.md").read_text().strip().splitlines()) == 5
    r = iotwasm("build", cwd=project)
    wasm = project / f"{name}.wasm"
    digest = (project / f"{name}.wasm.sha256").read_text().split()[0]
    import hashlib

    assert hashlib.sha256(wasm.read_bytes()).hexdigest() == digest and f"sha256:{digest}" in r.stdout
    r = iotwasm("test", cwd=project)
    assert r.stdout.strip().endswith(" passed, 0 failed") and "FAIL" not in r.stdout, r.stdout
    assert r.stdout.count("PASS") >= 3


def test_a_wrong_expectation_fails_with_a_readable_diff(tmp_path):
    iotwasm("new", "strict", "--lang", "c", cwd=tmp_path)
    project = tmp_path / "strict"
    samples = project / "samples.yaml"
    samples.write_text(samples.read_text().replace("- name: outside the range is dropped\n",
                                                   "- name: outside the range is dropped\n  expect: [{payload: x}]\n")
                       .replace("dead_letter: payload is not a JSON object", "dead_letter: not JSON"))
    r = iotwasm("test", cwd=project, ok=False)
    assert r.returncode == 1
    out = r.stdout
    assert "FAIL outside the range is dropped" in out and "FAIL not JSON is a dead letter" in out
    assert "--- expected" in out and "+++ actual" in out
    assert "-output: topic (default): x" in out and "+no output" in out
    assert "-dead letter: not JSON" in out and "+dead letter: payload is not a JSON object" in out
    assert out.strip().endswith("3 passed, 2 failed")


@pytest.mark.parametrize("lang,expect", [
    ("c", "c: clang and wasm-ld not found on PATH; install the Debian packages: apt-get install clang lld"),
    ("rust", "rust: no rustc on PATH; install the Debian packages: apt-get install rustc cargo "
             "libstd-rust-dev-wasm32"),
    ("assemblyscript", "assemblyscript: node not found on PATH; install Node.js 20 (Debian: apt-get "
                       "install nodejs npm)"),
])
def test_a_missing_toolchain_is_one_line_saying_what_to_install(tmp_path, lang, expect):
    iotwasm("new", "m", "--lang", lang, cwd=tmp_path)
    empty = tmp_path / "bin"
    empty.mkdir()
    r = iotwasm("build", cwd=tmp_path / "m", env={"PATH": str(empty)}, ok=False)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [f"error: {expect}"]


def test_a_rustc_without_the_wasm_target_is_skipped_and_named(tmp_path):
    """A rustup rustc without wasm32 earlier on PATH is not used; alone, it is reported."""
    iotwasm("new", "m", "--lang", "rust", cwd=tmp_path)
    fake = tmp_path / "rustup-bin"
    fake.mkdir()
    (fake / "rustc").write_text(f"#!/bin/sh\necho {tmp_path / 'sysroot'}\n")
    (fake / "rustc").chmod(0o755)
    r = iotwasm("build", cwd=tmp_path / "m", env={"PATH": str(fake)}, ok=False)
    assert r.stderr.strip().splitlines() == [
        "error: rust: no rustc on PATH has the wasm32-unknown-unknown target; install the Debian "
        "packages: apt-get install rustc cargo libstd-rust-dev-wasm32"]
    r = iotwasm("build", cwd=tmp_path / "m", env={"PATH": f"{fake}:{os.environ['PATH']}"})
    assert "built m.wasm" in r.stdout


@pytest.mark.parametrize("lang", ["python", "js"])
def test_component_languages_say_they_are_not_available_yet(tmp_path, lang):
    r = iotwasm("new", "m", "--lang", lang, cwd=tmp_path, ok=False)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    assert "not available yet" in r.stderr and not (tmp_path / "m").exists()
    listed = iotwasm("new", "--list", cwd=tmp_path).stdout
    assert any(line.startswith(lang) and "not available yet" in line for line in listed.splitlines())


@pytest.fixture()
def node(tmp_path):
    n = ApiNode(tmp_path).start()
    yield n
    n.stop()


def stored(node: ApiNode, table: str) -> list[bytes]:
    db = node.data / "store.db"
    if not db.exists():
        return []
    with sqlite3.connect(db) as c:
        try:
            return [row[0] for row in c.execute(f'SELECT payload FROM "{table}" ORDER BY id')]
        except sqlite3.OperationalError:  # no such table yet
            return []


def test_built_modules_run_in_a_route_on_a_node_and_dev_hot_updates_them(tmp_path, node):
    env = {"IOTWASM_URL": node.url, "IOTWASM_TOKEN": node.admin_token,
           "IOTWASM_CONFIG": str(tmp_path / "config.yaml")}
    # new -> dev --once (build, samples, push, apply) -> the route filters posted readings
    for lang in LANGS:
        name = f"range-{lang[:2]}"
        iotwasm("new", name, "--lang", lang, cwd=tmp_path)
        r = iotwasm("dev", "--once", cwd=tmp_path / name, env=env)
        assert f"deployed {name}:dev-" in r.stdout and "deployment " + name in r.stdout
        node.ingest(f"/{name}", "d1", [b'{"device":"d1","value":21.5}', b'{"device":"d1","value":99}',
                                       b'{"device":"d1","value":12}'])
        table = name.replace("-", "_")
        rows = wait_for(lambda: len(stored(node, table)) >= 2 and stored(node, table), 30, f"{name} output")
        assert rows == [b'{"device":"d1","value":21.5}', b'{"device":"d1","value":12}']

    # `iotwasm dev` watching: a saved change is rebuilt, tested and rolled out
    project = tmp_path / "range-c"
    admin = node.admin

    def digest() -> str:
        return admin.get("/v1/deployments/range-c").json()["module_digest"]

    before = digest()
    log = tmp_path / "dev.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([*CLI, "dev", "--interval", "0.1"], cwd=project, stdout=f,
                                stderr=subprocess.STDOUT, env={**os.environ, **env, "COLUMNS": "200"})
    try:
        wait_for(lambda: "deployed range-c:dev-" in log.read_text(), 60, "first deploy")
        assert digest() == before   # same source, same bytes, same digest: nothing to roll out
        source = project / "module.c"
        original = source.read_text()
        # a change that breaks a sample (30 is inside the range) is built, tested, not deployed
        source.write_text(original.replace("v > hi)", "v > hi - 10)"))
        wait_for(lambda: "samples fail: the node keeps the running version" in log.read_text(), 60,
                 "samples to fail")
        assert digest() == before
        # a change that passes them is rolled out: the node runs the new digest
        source.write_text(original.replace("filter ready", "filter v2 ready"))
        new = wait_for(lambda: digest() != before and digest(), 60, "hot update")
        assert new == "sha256:" + (project / "range-c.wasm.sha256").read_text().split()[0]
        node.ingest("/range-c", "d2", [b'{"device":"d2","value":30.5}', b'{"device":"d2","value":30}'])
        rows = wait_for(lambda: [r for r in stored(node, "range_c") if b"d2" in r], 30, "updated output")
        assert rows == [b'{"device":"d2","value":30}']
    finally:
        proc.terminate()
        proc.wait(30)
    assert log.read_text().count("deployed range-c:dev-") == 2, log.read_text()
    assert httpx.get(node.url + "/readyz").status_code == 200
