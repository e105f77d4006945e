"""AssemblyScript on the package sdk/assemblyscript, built by asc (npm `assemblyscript`,
version pinned by sdk/assemblyscript/package-lock.json and installed there by setup).

`import ... from "iotwasm"` resolves to the SDK through asc's `--path`, unless the project has
its own node_modules/iotwasm. The flags: the minimal runtime (the SDK collects garbage between
batch calls), and `abort` routed to the SDK so that a `throw` rejects the input it happened in.
Builds are reproducible: asc embeds only project-relative and `~lib/` names.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from .base import Language, ToolchainMissing, run, sdk_root, which

ASC_FLAGS = ["-O3", "--noAssert", "--runtime", "minimal", "--noColors",
             "--use", "abort=~lib/iotwasm/assembly/abi/iotAbort"]
ENTRY = Path("assembly") / "index.ts"


def find_asc(project: Path) -> Path:
    if which("node") is None:
        raise ToolchainMissing("assemblyscript: node not found on PATH; install Node.js 20 "
                               "(Debian: apt-get install nodejs npm)")
    for asc in (project / "node_modules" / ".bin" / "asc",
                sdk_root() / "assemblyscript" / "node_modules" / ".bin" / "asc"):
        if asc.is_file():
            return asc
    on_path = which("asc")
    if on_path is None:
        raise ToolchainMissing("assemblyscript: the compiler is not installed; run "
                               f"`npm ci --prefix {sdk_root() / 'assemblyscript'}` (make setup does)")
    return on_path


class AssemblyScript(Language):
    name = "assemblyscript"
    title = "AssemblyScript"
    toolchain = "asc 0.28.20, sdk/assemblyscript"
    watch = ("assembly/**/*.ts", "package.json")

    def detect(self, path: Path) -> bool:
        if path.is_file():
            return path.suffix == ".ts"
        return (path / ENTRY).is_file()

    def check(self) -> None:
        find_asc(Path.cwd())

    def build(self, path: Path, out: Path) -> str:
        cwd = path.parent if path.is_file() else path
        asc = find_asc(cwd)
        entry = path.name if path.is_file() else str(ENTRY)
        with tempfile.TemporaryDirectory(prefix="iotwasm-asc-") as tmp:
            # asc looks packages up as <path>/<name>/index.ts: give it iotwasm -> the SDK
            (Path(tmp) / "iotwasm").symlink_to(sdk_root().resolve() / "assemblyscript")
            return run([str(asc), entry, "-o", str(out.resolve()), *ASC_FLAGS, "--path", tmp],
                       cwd, what="asc")


LANGUAGE = AssemblyScript()
