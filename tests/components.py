"""Building the test and example components once per machine: builds are cached by source
digest (iotwasm.toolchain.componentize) and compiled code by digest + engine (the runtime's disk
cache), both under .iotwasm/ in the repository, so only the first run pays the seconds a
Python component takes to build and compile."""

from __future__ import annotations

import shutil
from pathlib import Path

from iotwasm.engine import Runtime
from iotwasm.toolchain.componentize import build

ROOT = Path(__file__).resolve().parent.parent
BUILD_CACHE = ROOT / ".iotwasm" / "build-cache"
COMPILE_CACHE = ROOT / ".iotwasm" / "compile-cache"
OUT = ROOT / ".iotwasm" / "test-components"
LANGS = ("python", "js")


def component(lang: str, project: str | Path, **kw) -> Path:
    """Build `project` (a directory under tests/components/<lang>/ when relative)."""
    path = Path(project)
    if not path.is_absolute():
        path = ROOT / "tests" / "components" / lang / project
    out = OUT / lang / f"{path.name}.wasm"
    return build(lang, path, out=out, cache_dir=BUILD_CACHE, **kw)


def example(lang: str, name: str) -> Path:
    path = ROOT / "examples" / "modules" / lang / name
    return build(lang, path, out=OUT / lang / f"example-{name}.wasm", cache_dir=BUILD_CACHE)


def cached_runtime() -> Runtime:
    return Runtime(cache_dir=COMPILE_CACHE)


def seed_compile_cache(directory: Path) -> None:
    """Copy the compiled components into another runtime's cache (a node's data dir)."""
    directory.mkdir(parents=True, exist_ok=True)
    for entry in COMPILE_CACHE.glob("*.cwasm"):
        shutil.copy(entry, directory / entry.name)
