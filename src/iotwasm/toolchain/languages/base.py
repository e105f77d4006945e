"""What every language entry provides: a name, how to recognise its projects, how to find its
toolchain (or say in one line what to install), and how to build a module."""

from __future__ import annotations

import abc

import os
import shutil
import subprocess
from pathlib import Path

from ...errors import IotwasmError

#: repository layout: src/iotwasm/toolchain/languages/base.py -> the checkout's sdk/
_DEFAULT_SDK = Path(__file__).resolve().parents[4] / "sdk"


class ToolchainMissing(IotwasmError):
    """A compiler or tool a build needs is not installed; the message says what to install."""

    kind = "toolchain_missing"


class BuildFailed(IotwasmError):
    """The toolchain ran and failed; `output` holds what it printed."""

    kind = "build_failed"

    def __init__(self, message: str, output: str = ""):
        super().__init__(message)
        self.output = output


class NotAvailable(IotwasmError):
    """The language is known but this iotwasm cannot build or run its modules yet."""

    kind = "not_available"


def sdk_root() -> Path:
    """The guest SDKs (sdk/c, sdk/rust, sdk/assemblyscript): $IOTWASM_SDK or the checkout's."""
    root = Path(os.environ.get("IOTWASM_SDK") or _DEFAULT_SDK)
    if not (root / "c" / "iotwasm.h").is_file():
        raise ToolchainMissing(f"iotwasm SDKs not found in {root}: set IOTWASM_SDK to the sdk/ "
                               "directory of an iotwasm checkout")
    return root


def cache_home() -> Path:
    """The toolchain's cache (built components, compiled code): $XDG_CACHE_HOME/iotwasm, or
    ~/.cache/iotwasm. Everything in it is keyed by digest and can be deleted at any time."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "iotwasm"


def which_all(command: str) -> list[Path]:
    """Every executable named `command` on PATH, in PATH order (a missing tool: empty)."""
    found = []
    for d in os.environ.get("PATH", "").split(os.pathsep):
        p = Path(d or ".") / command
        if p.is_file() and os.access(p, os.X_OK) and p not in found:
            found.append(p)
    return found


def which(command: str) -> Path | None:
    hit = shutil.which(command)
    return Path(hit) if hit else None


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, what: str = "build") -> str:
    """Run a toolchain command; its combined output, or BuildFailed carrying it."""
    try:
        r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)
    except FileNotFoundError as e:
        raise ToolchainMissing(f"{cmd[0]}: not found ({e.strerror})") from None
    except subprocess.TimeoutExpired:
        raise BuildFailed(f"{what} did not finish within 600 s: {' '.join(cmd)}") from None
    output = (r.stdout + r.stderr).strip()
    if r.returncode != 0:
        first = next((line for line in output.splitlines() if "error" in line.lower()),
                     output.splitlines()[0] if output else f"exit code {r.returncode}")
        raise BuildFailed(f"{what} failed: {first.strip()[:300]}", output)
    return output


class Language(abc.ABC):
    """One language: subclasses set the class attributes and implement the methods."""

    #: name used on the command line (`--lang`)
    name: str = ""
    title: str = ""
    #: what `iotwasm new --list` says about how modules are built
    toolchain: str = ""
    #: the ABI its modules speak (docs/abi.md)
    abi: str = "iotwasm-v1"
    #: False: listed, but `new` and `build` say it is not available yet
    available: bool = True
    #: source files of a project, relative to it (for `iotwasm dev` to watch)
    watch: tuple[str, ...] = ()
    #: the `resources` of the Deployment `iotwasm new` writes ({{resources}} in templates)
    resources: str = "{memory: 16Mi, fuel: 50M, timeout: 100ms}"

    @abc.abstractmethod
    def detect(self, path: Path) -> bool:
        """Whether `path` (a project directory or one source file) is in this language."""

    def check(self) -> None:  # noqa: B027 - a language with nothing to check keeps this default
        """Raise ToolchainMissing, one line naming what to install, when a tool is missing."""
        return None

    @abc.abstractmethod
    def build(self, path: Path, out: Path) -> str:
        """Build `path` (a project directory or a source file) into the module file `out`;
        returns the toolchain's output (warnings). Raises ToolchainMissing or BuildFailed."""

    def sources(self, path: Path) -> list[Path]:
        """The files whose change means a rebuild."""
        if path.is_file():
            return [path]
        return sorted(p for pattern in self.watch for p in path.glob(pattern) if p.is_file())
