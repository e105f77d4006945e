#!/usr/bin/env bash
# Prepares a machine for iotwasm: Debian packages (wasm toolchain, brokers, a browser for the
# dashboard's tests) and a Python venv.
# Idempotent and quick when nothing changed; the Makefile runs it before every target.
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
# the web dashboard's tests drive Debian's browser (never a browser downloaded at run time)
[ -x /usr/bin/chromium ] || missing+=(chromium)

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

stamp="$VENV/.iotwasm-setup"
want="$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: preparing Python environment in $VENV"
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[test,bench,components]"
  echo "$want" > "$stamp"
fi

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
