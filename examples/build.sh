#!/usr/bin/env bash
# Builds the example modules in examples/modules/ from their sources, next to them:
#
#   *.c        iotwasm-v1 modules on the C SDK (sdk/c/iotwasm.h), freestanding wasm32, no libc
#   wasi_*.c   WASI command programs, wasm32-wasi with wasi-libc
#   *.wat      hand-written modules, assembled with wat2wasm
#   rust/NAME/ crates on the Rust SDK (sdk/rust), built by `iotwasm build` into rust/NAME.wasm
#   assemblyscript/NAME.ts  modules on the AssemblyScript SDK, built by `iotwasm build`
#
#   examples/build.sh           build into examples/modules/
#   examples/build.sh --check   build into a temporary directory and compare with the
#                               committed .wasm files; exit 1 listing every difference
#
# Builds are deterministic: no debug info, no paths, and --strip-all drops the name and
# producers sections (exports keep their names), so the same toolchain gives the same bytes
# on every run and machine; Rust paths are remapped and asc embeds only relative names (see
# src/iotwasm/toolchain/languages/). A different clang, wabt, rustc or assemblyscript release
# may generate different code; --check prints the versions in use when it finds a difference.
#
# Installs nothing. Exit status: 0 ok, 1 build failed or --check found differences,
# 2 a tool is missing (the Debian packages to install are printed), 64 bad usage.
set -euo pipefail

cd "$(dirname "$0")/.."
SRC=examples/modules
CLANG=${CLANG:-clang}
WAT2WASM=${WAT2WASM:-wat2wasm}
PY=${PYTHON:-.venv/bin/python}

CHECK=0
case "${1:-}" in
  "") ;;
  --check) CHECK=1 ;;
  -h|--help) sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
  *) echo "usage: examples/build.sh [--check]" >&2; exit 64 ;;
esac

# -- toolchain -------------------------------------------------------------------------------
missing=()
command -v "$CLANG" >/dev/null 2>&1 || missing+=(clang)
command -v wasm-ld >/dev/null 2>&1 || missing+=(lld)
command -v "$WAT2WASM" >/dev/null 2>&1 || missing+=(wabt)
if command -v "$CLANG" >/dev/null 2>&1; then
  # clang answers with the bare file name when it cannot find the file
  builtins=$("$CLANG" --target=wasm32-wasi -print-libgcc-file-name 2>/dev/null || true)
  [ -f "$builtins" ] || missing+=(libclang-rt-dev-wasm32)
  libc=$("$CLANG" --target=wasm32-wasi -print-file-name=libc.a 2>/dev/null || true)
  [ -f "$libc" ] || missing+=(wasi-libc)
fi
# Rust: a rustc on PATH with the wasm32 standard library (a rustup rustc without it is skipped)
rust_ok=0
for rustc in $(type -ap rustc); do
  sysroot=$("$rustc" --print sysroot 2>/dev/null || true)
  [ -n "$sysroot" ] && [ -d "$sysroot/lib/rustlib/wasm32-unknown-unknown/lib" ] && rust_ok=1 && break
done
[ $rust_ok -eq 1 ] || missing+=(rustc libstd-rust-dev-wasm32)
command -v cargo >/dev/null 2>&1 || missing+=(cargo)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
if [ ${#missing[@]} -gt 0 ]; then
  echo "examples/build.sh: missing tools; install the Debian packages: ${missing[*]}" >&2
  echo "  sudo apt-get install ${missing[*]}" >&2
  exit 2
fi
if [ ! -x sdk/assemblyscript/node_modules/.bin/asc ]; then
  echo "examples/build.sh: the AssemblyScript compiler is not installed: npm ci --prefix sdk/assemblyscript" >&2
  exit 2
fi

# Freestanding iotwasm-v1 modules. --stack-first puts the stack below static data, so a
# stack overflow runs off the bottom of memory and traps instead of overwriting globals.
CFLAGS=(--target=wasm32 -O2 -nostdlib -Wall -Wextra -I sdk/c
        -Wl,--no-entry -Wl,--stack-first -Wl,--strip-all)
WASI_CFLAGS=(--target=wasm32-wasi -O2 -Wall -Wextra -Wl,--strip-all)

if [ $CHECK -eq 1 ]; then
  OUT=$(mktemp -d)
  trap 'rm -rf "$OUT"' EXIT
else
  OUT=$SRC
fi

build() {  # build SOURCE into $OUT, printing the command
  local src=$1 name out
  name=$(basename "${src%.*}")
  out=$OUT/$name.wasm
  case "$src" in */rust/*|*/assemblyscript/*) out=$OUT/$(basename "$(dirname "$src")")/$name.wasm ;; esac
  mkdir -p "$(dirname "$out")"
  local cmd
  case "$src" in
    */rust/*|*.ts) cmd=("$PY" -m iotwasm.cli.main build "$src" --out "$out") ;;
    *.wat) cmd=("$WAT2WASM" "$src" -o "$out") ;;
    */wasi_*.c) cmd=("$CLANG" "${WASI_CFLAGS[@]}" -o "$out" "$src") ;;
    *.c) cmd=("$CLANG" "${CFLAGS[@]}" -o "$out" "$src") ;;
  esac
  [ $CHECK -eq 1 ] || echo "${cmd[*]}"
  "${cmd[@]}" >/dev/null
  chmod 644 "$out"   # the linker marks its output executable; these are data files
  rm -f "$out.sha256"
}

# cargo's work files: a scratch directory for --check, else one shared (ignored) directory
if [ $CHECK -eq 1 ]; then
  export CARGO_TARGET_DIR=$OUT/.cargo-target
else
  export CARGO_TARGET_DIR=$PWD/$SRC/rust/target
fi

sources=()
for src in "$SRC"/*.c "$SRC"/*.wat "$SRC"/rust/*/Cargo.toml "$SRC"/assemblyscript/*.ts; do
  [ -e "$src" ] || continue
  case "$src" in */Cargo.toml) src=$(dirname "$src") ;; esac
  sources+=("$src")
done
for src in "${sources[@]}"; do
  build "$src"
done

# --- components: Python and JavaScript examples ----------------------------------------------
# python/NAME/main.py and js/NAME/index.js are built into components with the project's own
# build (iotwasm.toolchain.componentize: componentize-py, componentize-qjs; scripts/setup.sh installs
# them) as python/NAME.wasm and js/NAME.wasm. They are not committed: a Python component is
# 18 MB (CPython inside), so they are built where they are used and cached by a digest of
# their sources, SDK, WIT and toolchain (.iotwasm/build-cache). --check leaves them out; the
# tests build them and check their behaviour against the C versions.
if [ $CHECK -eq 0 ]; then
  PY=${PYTHON_VENV:-.venv/bin/python}
  for dir in "$SRC"/python/*/ "$SRC"/js/*/; do
    [ -d "$dir" ] || continue
    lang=$(basename "$(dirname "$dir")")
    name=$(basename "$dir")
    echo "componentize $lang $dir -> $SRC/$lang/$name.wasm"
    "$PY" -m iotwasm.toolchain.componentize "$lang" "$dir" -o "$SRC/$lang/$name.wasm" --cache .iotwasm/build-cache
  done
fi
# --- end components ------------------------------------------------------------------------

[ $CHECK -eq 1 ] || exit 0

# -- --check ---------------------------------------------------------------------------------
problems=()
for src in "${sources[@]}"; do
  name=$(basename "${src%.*}").wasm
  case "$src" in */rust/*|*/assemblyscript/*) name=$(basename "$(dirname "$src")")/$name ;; esac
  if [ ! -f "$SRC/$name" ]; then
    problems+=("$SRC/$name: not committed (source $src)")
  elif ! cmp -s "$OUT/$name" "$SRC/$name"; then
    problems+=("$SRC/$name: differs from a build of $src")
  fi
done
for wasm in "$SRC"/*.wasm "$SRC"/rust/*.wasm "$SRC"/assemblyscript/*.wasm; do
  [ -e "$wasm" ] || continue
  name=${wasm#"$SRC"/}
  [ -f "$OUT/$name" ] || problems+=("$wasm: no source (.c, .wat, crate or .ts) builds it")
done

if [ ${#problems[@]} -gt 0 ]; then
  echo "examples/build.sh --check: committed modules do not match their sources:" >&2
  printf '  %s\n' "${problems[@]}" >&2
  echo "run examples/build.sh (make examples) and commit the results; toolchain in use:" >&2
  echo "  $("$CLANG" --version | head -n1); wat2wasm $("$WAT2WASM" --version);" \
       "$(rustc --version 2>/dev/null); asc $(node sdk/assemblyscript/node_modules/.bin/asc --version 2>/dev/null)" >&2
  exit 1
fi
echo "examples/build.sh --check: ${#sources[@]} modules match their sources"
