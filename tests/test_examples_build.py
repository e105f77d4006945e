"""The committed example modules are exactly what their sources build to.

`examples/build.sh --check` rebuilds every example into a temporary directory and compares
the bytes. Without the wasm toolchain (the script exits 2 and names the Debian packages)
the test fails with the packages to install: `make test` installs them first.
"""

from __future__ import annotations

import subprocess

import pytest

from conftest import EXAMPLES, ROOT

BUILD = ROOT / "examples" / "build.sh"
MISSING_TOOLS = 2


def sources():
    """(source, the module it builds): C and WAT files, Rust crates, AssemblyScript files."""
    found = [(p, p.with_suffix(".wasm")) for p in EXAMPLES.iterdir() if p.suffix in (".c", ".wat")]
    found += [(p.parent, p.parent.with_suffix(".wasm")) for p in (EXAMPLES / "rust").glob("*/Cargo.toml")]
    found += [(p, p.with_suffix(".wasm")) for p in (EXAMPLES / "assemblyscript").glob("*.ts")]
    return sorted(found)


def test_every_source_has_a_committed_module():
    assert sources(), f"no example sources in {EXAMPLES}"
    assert {s.parent.name for s, _ in sources()} >= {"modules", "rust", "assemblyscript"}
    missing = [str(s.relative_to(EXAMPLES)) for s, wasm in sources() if not wasm.is_file()]
    assert not missing, f"no .wasm built from {', '.join(missing)}: run `make examples` and commit it"


def test_committed_modules_match_their_sources():
    r = subprocess.run(["bash", str(BUILD), "--check"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    if r.returncode == MISSING_TOOLS:
        pytest.fail(f"wasm toolchain missing (run `make test`, which installs it): {r.stderr.strip()}")
    assert r.returncode == 0, f"examples/build.sh --check failed:\n{r.stdout}{r.stderr}"
