#!/usr/bin/env bash
# Prepares a machine for iotwasm: Debian packages (wasm toolchains for C and Rust, brokers, a
# browser for the dashboard's tests), the AssemblyScript compiler (npm, pinned by
# sdk/assemblyscript/package-lock.json, installed in sdk/assemblyscript/node_modules, never
# globally) and a Python venv.
# Idempotent and quick when nothing changed; the Makefile runs it before every target. When
# another apt or dpkg holds the package locks, it waits for them (up to 10 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${IOTWASM_VENV:-.venv}
PY=${PYTHON:-python3}

# command -> Debian package that provides it
declare -A NEED=(
  [clang]=clang
  [wasm-ld]=lld
  [wat2wasm]=wabt
)
missing=()
for cmd in "${!NEED[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${NEED[$cmd]}")
done
# the wasm32 C runtime and libc are files, not commands
[ -f /usr/lib/llvm-14/lib/clang/14.0.6/lib/wasi/libclang_rt.builtins-wasm32.a ] || \
  ls /usr/lib/llvm-*/lib/clang/*/lib/wasi/libclang_rt.builtins-wasm32.a >/dev/null 2>&1 || \
  missing+=(libclang-rt-dev-wasm32)
[ -d /usr/include/wasm32-wasi ] || missing+=(wasi-libc)
# brokers: the tests start their own processes on free ports
{ command -v mosquitto || [ -x /usr/sbin/mosquitto ]; } >/dev/null 2>&1 || missing+=(mosquitto)
{ command -v nats-server || [ -x /usr/sbin/nats-server ]; } >/dev/null 2>&1 || missing+=(nats-server)
# a TLS test makes its broker's self-signed certificate with the openssl command
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# the PostgreSQL sink's tests and the PLC demo start their own server from Debian's binaries
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
# the web dashboard's tests drive Debian's browser (never a browser downloaded at run time)
[ -x /usr/bin/chromium ] || missing+=(chromium)
# Rust modules: Debian's rustc and cargo with the wasm32 standard library (a rustup toolchain
# elsewhere on PATH does not count: it has no wasm32 target here)
[ -x /usr/bin/rustc ] || missing+=(rustc)
[ -x /usr/bin/cargo ] || missing+=(cargo)
[ -d /usr/lib/rustlib/wasm32-unknown-unknown/lib ] || missing+=(libstd-rust-dev-wasm32)
# AssemblyScript modules: Node.js and npm run the compiler
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
# benchmarks/instructions.py counts instructions per operation under callgrind
command -v valgrind >/dev/null 2>&1 || missing+=(valgrind)

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"

# apt-get that waits for another package manager instead of failing on its lock: dpkg's lock
# through apt's own timeout, the package lists' lock (apt-get update) by retrying
apt_get() {
  local deadline=$((SECONDS + 600)) out
  while :; do
    if out=$($SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 "$@" 2>&1); then
      return 0
    fi
    if grep -qE "Could not get lock|Unable to lock|is held by process" <<<"$out" && [ $SECONDS -lt $deadline ]; then
      echo "setup: another package manager holds the apt/dpkg lock; waiting for it"
      sleep 5
      continue
    fi
    echo "$out" >&2
    return 1
  done
}

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  apt_get update -qq
  apt_get install -y -qq --no-install-recommends "${missing[@]}"
fi

# the AssemblyScript compiler, exactly as locked, into the SDK's own node_modules
lock=sdk/assemblyscript/package-lock.json
npm_stamp=sdk/assemblyscript/node_modules/.iotwasm-setup
npm_want="$(sha256sum "$lock" | cut -c1-16)"
if [ "$(cat "$npm_stamp" 2>/dev/null)" != "$npm_want" ]; then
  echo "setup: installing the AssemblyScript compiler (npm ci in sdk/assemblyscript)"
  npm ci --prefix sdk/assemblyscript --no-audit --no-fund --loglevel=error >/dev/null
  echo "$npm_want" > "$npm_stamp"
fi

stamp="$VENV/.iotwasm-setup"
want="$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: preparing Python environment in $VENV"
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[test,bench,components]"
  echo "$want" > "$stamp"
fi

# the native epoch ticker (src/iotwasm/engine/native, loaded with ctypes): rebuilt when its
# source changes; without it the engine ticks from a Python thread
tick_dir=src/iotwasm/engine/native
tick_want="$(sha256sum "$tick_dir/epoch_ticker.c" | cut -c1-16)"
if [ ! -f "$tick_dir/libiotwasm_ticker.so" ] || [ "$(cat "$tick_dir/.built" 2>/dev/null)" != "$tick_want" ]; then
  echo "setup: building the native epoch ticker"
  clang -O2 -Wall -Wextra -shared -fPIC -pthread -o "$tick_dir/libiotwasm_ticker.so.tmp" "$tick_dir/epoch_ticker.c"
  mv -f "$tick_dir/libiotwasm_ticker.so.tmp" "$tick_dir/libiotwasm_ticker.so"
  echo "$tick_want" > "$tick_dir/.built"
fi

# CPython extensions for the venv's interpreter, each the common case of a hot path whose
# reference stays in Python: rebuilt when its source or the interpreter changes; without them
# (no Python headers, say) the Python path runs
read -r py_inc py_ext < <("$VENV/bin/python" -c \
  "import sysconfig as s; print(s.get_paths()['include'], s.get_config_var('EXT_SUFFIX'))")
build_extension() {   # directory, source, module name, stamp file, what it is, what runs without it
  local dir=$1 src=$2 name=$3 stamp=$4 what=$5 without=$6
  local so="$dir/$name$py_ext" want
  want="$(cat "$dir/$src" "$py_inc/patchlevel.h" 2>/dev/null | sha256sum | cut -c1-16)"
  if [ -f "$so" ] && [ "$(cat "$dir/$stamp" 2>/dev/null)" = "$want" ]; then
    return 0
  fi
  if [ -f "$py_inc/Python.h" ]; then
    echo "setup: building $what"
    clang -O2 -Wall -Wextra -Werror -shared -fPIC -I"$py_inc" -o "$so.tmp" "$dir/$src"
    mv -f "$so.tmp" "$so"
    echo "$want" > "$dir/$stamp"
  else
    echo "setup: no Python.h in $py_inc; $without"
  fi
}
# the native batch call of iotwasm-v1 guests (engine/v1_native.py)
build_extension "$tick_dir" v1_batch.c iotwasm_v1_batch .built-batch "the native batch call" \
  "guests make their batch calls from Python"
# the outbox's group commit without the GIL (pipeline/outbox_native.py), calling the SQLite of
# Python's sqlite3 module
build_extension src/iotwasm/pipeline/native outbox_writer.c iotwasm_outbox_writer .built \
  "the outbox's native group commit" "the outbox writes through Python's sqlite3"

# --- components: the JavaScript toolchain (componentize-qjs) --------------------------------
# Project-local and pinned by sdk/js/toolchain/package-lock.json; never installed globally.
# The package ships its native binding inside the npm registry (no download at build time).
js_tools=sdk/js/toolchain
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "setup: installing Debian packages: nodejs npm"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
js_stamp="$js_tools/node_modules/.iotwasm-setup"
js_want="$(sha256sum "$js_tools/package-lock.json" | cut -c1-16)"
if [ "$(cat "$js_stamp" 2>/dev/null)" != "$js_want" ]; then
  echo "setup: installing the JavaScript component toolchain in $js_tools"
  (cd "$js_tools" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$js_want" > "$js_stamp"
fi
# --- end components --------------------------------------------------------------------------
