"""C on the single-header SDK (sdk/c/iotwasm.h), freestanding wasm32 with Debian's clang."""

from __future__ import annotations

from pathlib import Path

from .base import Language, ToolchainMissing, run, sdk_root, which

#: the flags of examples/build.sh: no libc; --stack-first so that a stack overflow runs off the
#: bottom of memory and traps instead of overwriting globals; --strip-all so that builds are
#: byte-for-byte reproducible (no name or producers section)
CFLAGS = ["--target=wasm32", "-O2", "-nostdlib", "-Wall", "-Wextra",
          "-Wl,--no-entry", "-Wl,--stack-first", "-Wl,--strip-all"]
INSTALL = "apt-get install clang lld"


class C(Language):
    name = "c"
    title = "C"
    toolchain = "clang, sdk/c/iotwasm.h"
    watch = ("*.c", "*.h")

    def detect(self, path: Path) -> bool:
        if path.is_file():
            return path.suffix == ".c"
        return any(path.glob("*.c")) and not (path / "Cargo.toml").exists()

    def check(self) -> None:
        missing = [tool for tool in ("clang", "wasm-ld") if which(tool) is None]
        if missing:
            raise ToolchainMissing(f"c: {' and '.join(missing)} not found on PATH; install the "
                                   f"Debian packages: {INSTALL}")

    def build(self, path: Path, out: Path) -> str:
        self.check()
        sources = [path.name] if path.is_file() else sorted(p.name for p in path.glob("*.c"))
        cwd = path.parent if path.is_file() else path
        return run(["clang", *CFLAGS, "-I", str(sdk_root() / "c"), "-o", str(out.resolve()), *sources],
                   cwd, what="clang")


LANGUAGE = C()
