"""Every command in README.md runs as written, in a checkout, against a node started the way
`make demo` starts it.

The test extracts each fenced `sh` and `python` block from README.md and runs it unchanged
(each block in a fresh shell from the checkout's root, so a `cd` lasts for its block), with
two exceptions it names: the `make demo` / `make test` block (the node is started here as
`make demo` starts it, and the suite cannot run itself), and the ports: the demo's API and
ingest ports (8282, 8181) become free ones, so the test can run next to a real demo. The
checkout is a directory of links to this repository's files with a data directory of its own,
so the README's relative paths (`.iotwasm/demo/admin.token`, `examples/…`) mean what they mean
for a user, and nothing is written into the repository.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from apinode import wait_for
from brokers import free_port

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
#: blocks not run, and why: the node is started here the way this block starts it
NOT_RUN = {("make demo", "make test"): "the node under test is started as `make demo` starts it; "
                                       "`make test` is this suite"}


def blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block in `text`."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)]


def _is_not_run(body: str) -> bool:
    commands = tuple(ln.split("#")[0].strip() for ln in body.splitlines() if ln.strip())
    return commands in NOT_RUN


def test_the_readme_has_commands_to_run():
    found = blocks(README.read_text())
    langs = [lang for lang, _ in found]
    assert langs.count("sh") >= 4 and "python" in langs, langs
    assert sum(_is_not_run(b) for _, b in found) == 1   # the exception is still there, once


@pytest.fixture()
def checkout(tmp_path):
    """A checkout: links to the repository's files, its own `.iotwasm`, and a node started the
    way `make demo` starts it (`up examples/greenhouse --data .iotwasm/demo`) on free ports."""
    work = tmp_path / "iotwasm"
    work.mkdir()
    for entry in ROOT.iterdir():
        if entry.name in (".git", ".iotwasm", "my-filter") or entry.name.startswith((".pytest", ".ruff")):
            continue
        (work / entry.name).symlink_to(entry)
    api, ingest = free_port(), free_port()
    env = {**os.environ, "IOTWASM_CONFIG": str(tmp_path / "config.yaml"), "HOME": str(tmp_path),
           # the checkout's own sources, whatever the virtual environment's editable install points at
           "PYTHONPATH": str(ROOT / "src")}
    for k in ("IOTWASM_URL", "IOTWASM_TOKEN", "IOTWASM_CONTEXT"):
        env.pop(k, None)
    log = open(tmp_path / "node.log", "wb")
    node = subprocess.Popen([str(work / ".venv/bin/python"), "-m", "iotwasm.cli.main", "up", "examples/greenhouse",
                             "--data", ".iotwasm/demo", "--api", f"127.0.0.1:{api}", "--http", f"127.0.0.1:{ingest}"],
                            cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)

    def ready():
        try:
            return httpx.get(f"http://127.0.0.1:{api}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return node.poll() is not None
    try:
        wait_for(ready, 60, "the demo node")
        assert node.poll() is None, (tmp_path / "node.log").read_text()
        yield {"dir": work, "env": env, "ports": {"8282": str(api), "8181": str(ingest)}, "log": tmp_path / "node.log"}
    finally:
        node.send_signal(signal.SIGINT)
        try:
            node.wait(30)
        except subprocess.TimeoutExpired:
            node.kill()
        log.close()


def test_every_readme_command_runs_as_written(checkout):
    work, env = checkout["dir"], checkout["env"]
    ran = 0
    for lang, body in blocks(README.read_text()):
        if lang not in ("sh", "python") or _is_not_run(body):
            continue
        script = body
        for port, free in checkout["ports"].items():
            script = script.replace(f"127.0.0.1:{port}", f"127.0.0.1:{free}")
        if lang == "sh":
            cmd = ["bash", "-e", "-o", "pipefail", "-c", script]
        else:
            cmd = [str(work / ".venv/bin/python"), "-c", script]
        r = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, (f"README block failed (exit {r.returncode}):\n{body}\nstdout:\n{r.stdout[-3000:]}"
                                   f"\nstderr:\n{r.stderr[-3000:]}\nnode:\n{checkout['log'].read_text()[-2000:]}")
        ran += 1
    assert ran >= 5
    # what the blocks did is there: the scaffolded module built, the applied route running
    assert (work / "my-filter" / "my-filter.wasm").is_file()
    r = subprocess.run([str(work / ".venv/bin/iotwasm"), "get", "routes", "-o", "json"], cwd=work, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and '"filter"' in r.stdout, r.stderr
