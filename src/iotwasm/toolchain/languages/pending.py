"""Languages whose modules are components (docs/abi.md, the component ABI): Python and
JavaScript. Listed so that `iotwasm new --list` shows them; building and running them needs
component-model support in the engine, which this iotwasm does not have yet, so each says so
in one line instead of pretending."""

from __future__ import annotations

from pathlib import Path

from .base import Language, NotAvailable


class Pending(Language):
    available = False
    abi = "component"
    suffix = ""

    def detect(self, path: Path) -> bool:
        if path.is_file():
            return path.suffix == self.suffix
        return any(path.glob(f"*{self.suffix}")) and not (path / "assembly").is_dir()

    def check(self) -> None:
        raise NotAvailable(f"{self.name}: not available yet: {self.title} modules are components "
                           f"({self.toolchain}), which this iotwasm cannot build or run yet")

    def build(self, path: Path, out: Path) -> str:
        self.check()
        return ""


class Python(Pending):
    name = "python"
    title = "Python"
    toolchain = "componentize-py"
    suffix = ".py"


class JavaScript(Pending):
    name = "js"
    title = "JavaScript"
    toolchain = "componentize-js"
    suffix = ".js"


PYTHON = Python()
JAVASCRIPT = JavaScript()
