"""Rust on the crate sdk/rust, built by cargo for wasm32-unknown-unknown, offline.

Debian's rustc 1.63 (`libstd-rust-dev-wasm32` holds its wasm32 standard library) is the one
found here; a rustup `rustc` earlier on PATH without the wasm32 target is skipped rather than
used. Builds are reproducible, wherever the checkout is: cargo mixes a package's absolute path
into the hashes that name its symbols (for the project and for a path dependency such as the
SDK), and with them the order of functions in the output can change. So the project and the
SDK are built from a staged copy at a path that depends only on their contents
(`<tmp>/iotwasm-rust-<digest>/{project,sdk}`); paths are remapped (`--remap-path-prefix`) so
none ends up in panic messages, and the release profile (lto, one codegen unit, strip) leaves
no names or debug info.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .base import BuildFailed, Language, ToolchainMissing, run, sdk_root, which_all

TARGET = "wasm32-unknown-unknown"
INSTALL = "apt-get install rustc cargo libstd-rust-dev-wasm32"
#: the guest's shadow stack (in linear memory) is 64 KiB, as clang's default for C modules
STACK = "-C link-arg=-zstack-size=65536"


def _has_wasm_target(rustc: Path) -> bool:
    try:
        sysroot = subprocess.run([str(rustc), "--print", "sysroot"], capture_output=True, text=True,
                                 timeout=60, check=False).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return False
    return bool(sysroot) and (Path(sysroot) / "lib" / "rustlib" / TARGET / "lib").is_dir()


def find_toolchain() -> tuple[Path, Path]:
    """(rustc, cargo): the first rustc on PATH with the wasm32 target, and the cargo beside it."""
    rustcs = which_all("rustc")
    rustc = next((r for r in rustcs if _has_wasm_target(r)), None)
    if rustc is None:
        why = "no rustc on PATH" if not rustcs else f"no rustc on PATH has the {TARGET} target"
        raise ToolchainMissing(f"rust: {why}; install the Debian packages: {INSTALL}")
    cargos = which_all("cargo")
    beside = rustc.parent / "cargo"
    cargo = beside if beside in cargos else (cargos[0] if cargos else None)
    if cargo is None:
        raise ToolchainMissing(f"rust: cargo not found on PATH; install the Debian packages: {INSTALL}")
    return rustc, cargo


class Rust(Language):
    name = "rust"
    title = "Rust"
    toolchain = "cargo, sdk/rust"
    watch = ("Cargo.toml", "src/**/*.rs")

    def detect(self, path: Path) -> bool:
        return path.is_dir() and (path / "Cargo.toml").is_file()

    def check(self) -> None:
        find_toolchain()

    def build(self, path: Path, out: Path) -> str:
        rustc, cargo = find_toolchain()
        project = path.resolve()
        target_dir = Path(os.environ.get("CARGO_TARGET_DIR") or project / "target")
        with _staged(project, sdk_root().resolve()) as (staged, sdk):
            env = {**os.environ, "RUSTC": str(rustc), "CARGO_TARGET_DIR": str(target_dir),
                   "RUSTFLAGS": f"--remap-path-prefix={staged}=. --remap-path-prefix={sdk}=sdk {STACK}"}
            output = run([str(cargo), "build", "--offline", "--release", "--quiet", "--target", TARGET],
                         staged, env, what="cargo build")
        built = target_dir / TARGET / "release" / f"{_crate_name(project)}.wasm"
        if not built.is_file():
            raise BuildFailed(f"cargo build wrote no {built.name}: is the crate a cdylib "
                              "(crate-type = [\"cdylib\"] under [lib])?")
        shutil.copyfile(built, out)
        return output


#: what a staged copy leaves out: build output and version control
_SKIP = shutil.ignore_patterns("target", ".git", "*.wasm", "*.sha256")


def _files(root: Path) -> Iterator[Path]:
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).parts
        if p.is_file() and not any(part in ("target", ".git") for part in rel) \
                and not p.name.endswith((".wasm", ".sha256")):
            yield p


@contextmanager
def _staged(project: Path, sdk: Path) -> Iterator[tuple[Path, Path]]:
    """The project and the Rust SDK copied to ``<tmp>/iotwasm-rust-<digest>/{project,sdk}``,
    where the digest covers both trees' files (names and bytes): the same sources build at the
    same absolute path on every machine and checkout. The project's dependency on the SDK
    points at the copy. Held under a lock while cargo runs; removed afterwards."""
    h = hashlib.sha256()
    for root, tag in ((project, b"project"), (sdk / "rust", b"sdk")):
        for f in _files(root):
            h.update(tag + b"\0" + str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    where = Path(tempfile.gettempdir()) / f"iotwasm-rust-{h.hexdigest()[:16]}"
    with open(f"{where}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            shutil.rmtree(where, ignore_errors=True)
            staged, staged_sdk = where / "project", where / "sdk"
            shutil.copytree(project, staged, ignore=_SKIP)
            shutil.copytree(sdk / "rust", staged_sdk / "rust", ignore=_SKIP)
            _point_at(staged / "Cargo.toml", sdk / "rust", project, "../sdk/rust")
            yield staged, staged_sdk
        finally:
            shutil.rmtree(where, ignore_errors=True)


def _point_at(manifest: Path, sdk_crate: Path, project: Path, new: str) -> None:
    """Rewrite the `path = "…"` of the dependency that resolves to `sdk_crate` to `new`."""
    text = manifest.read_text()

    def repl(m: re.Match) -> str:
        target = (project / m.group(2)).resolve() if not os.path.isabs(m.group(2)) else Path(m.group(2))
        return f'{m.group(1)}"{new}"' if target == sdk_crate else m.group(0)

    manifest.write_text(re.sub(r'(\bpath\s*=\s*)"([^"]*)"', repl, text))


def _crate_name(project: Path) -> str:
    """The package name of Cargo.toml ('-' becomes '_' in file names)."""
    import tomllib

    try:
        with open(project / "Cargo.toml", "rb") as f:
            name = tomllib.load(f)["package"]["name"]
    except (OSError, KeyError, tomllib.TOMLDecodeError) as e:
        raise BuildFailed(f"{project / 'Cargo.toml'}: no [package] name ({e})") from None
    return str(name).replace("-", "_")


LANGUAGE = Rust()
