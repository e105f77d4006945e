"""Rust on the crate sdk/rust, built by cargo for wasm32-unknown-unknown, offline.

Debian's rustc 1.63 (`libstd-rust-dev-wasm32` holds its wasm32 standard library) is the one
found here; a rustup `rustc` earlier on PATH without the wasm32 target is skipped rather than
used. Builds are reproducible: paths are remapped (`--remap-path-prefix`), so the checkout's
location does not end up in panic messages, and the release profile of the project (lto,
one codegen unit, strip) leaves no names or debug info.
"""

from __future__ import annotations

import os
import shutil
import subprocess
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
        sdk = sdk_root().resolve()
        target_dir = Path(os.environ.get("CARGO_TARGET_DIR") or project / "target")
        env = {**os.environ, "RUSTC": str(rustc), "CARGO_TARGET_DIR": str(target_dir),
               "RUSTFLAGS": f"--remap-path-prefix={project}=. --remap-path-prefix={sdk}=sdk {STACK}"}
        output = run([str(cargo), "build", "--offline", "--release", "--quiet", "--target", TARGET],
                     project, env, what="cargo build")
        built = target_dir / TARGET / "release" / f"{_crate_name(project)}.wasm"
        if not built.is_file():
            raise BuildFailed(f"cargo build wrote no {built.name}: is the crate a cdylib "
                              "(crate-type = [\"cdylib\"] under [lib])?")
        shutil.copyfile(built, out)
        return output


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
