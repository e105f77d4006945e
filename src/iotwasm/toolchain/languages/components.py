"""Languages whose modules are components (docs/abi.md, "Component ABI"): Python and
JavaScript. A project is a directory with the module (`main.py`, `index.js`) on the SDK
(sdk/python, sdk/js), or a single source file; `toolchain.componentize` builds it, linking the
host interfaces of the capabilities manifest.yaml grants, and caches the result by the digest
of its inputs, so an unchanged project is not rebuilt (componentize-py takes seconds)."""

from __future__ import annotations

import abc
from pathlib import Path

from .base import Language


class Component(Language):
    abi = "component"
    #: the module a project directory must have
    entry = ""
    suffix = ""
    #: a component carries an interpreter: it needs more memory, fuel and time than a core
    #: module doing the same work. Measured on the templates' samples (filter, aggregate):
    #: 90-110 k fuel per message in Python, 160-190 k in JavaScript, so 2 G covers a batch of
    #: some ten thousand messages.
    resources = "{memory: 64Mi, fuel: 2G, timeout: 1s}"

    def detect(self, path: Path) -> bool:
        if path.is_file():
            return path.suffix == self.suffix
        return (path / self.entry).is_file()

    def sources(self, path: Path) -> list[Path]:
        """As the build sees them: not under node_modules, __pycache__, build/ or a hidden
        directory (a virtualenv in the project is not watched)."""
        if path.is_file():
            return [path]
        skip = {"build", "node_modules", "__pycache__"}
        return [p for p in super().sources(path)
                if not any(part in skip or part.startswith(".") for part in p.relative_to(path).parts[:-1])]

    def _split(self, path: Path) -> tuple[Path, str]:
        """(project directory, module) for a directory or a single source file."""
        if path.is_file():
            return path.parent, path.name
        return path, self.entry

    @staticmethod
    def _componentize():
        # imported when used: the builder imports base.py of this package (a cycle at load)
        from .. import componentize

        return componentize

    def check(self) -> None:
        self._tool(self._componentize())

    @abc.abstractmethod
    def _tool(self, componentize) -> object:
        """The toolchain's command, or ToolchainMissing saying what to install."""

    def build(self, path: Path, out: Path) -> str:
        componentize = self._componentize()
        root, module = self._split(path)
        self._tool(componentize)
        self._build(componentize, root, module, out)
        return ""

    @abc.abstractmethod
    def _build(self, componentize, root: Path, module: str, out: Path) -> None:
        """Run the language's componentize step on `root` (entry `module`) into `out`."""


class Python(Component):
    name = "python"
    title = "Python"
    toolchain = "componentize-py 0.25.1, sdk/python"
    entry = "main.py"
    suffix = ".py"
    watch = ("**/*.py", "manifest.yaml")  # the manifest: its capabilities shape the build

    def _tool(self, componentize) -> object:
        return componentize.componentize_py()

    def _build(self, componentize, root: Path, module: str, out: Path) -> None:
        componentize.build_python(root, out=out, module=module.removesuffix(".py"))


class JavaScript(Component):
    name = "js"
    title = "JavaScript"
    toolchain = "componentize-qjs (QuickJS), sdk/js"
    entry = "index.js"
    suffix = ".js"
    watch = ("**/*.js", "**/*.mjs", "**/*.json", "manifest.yaml")

    def detect(self, path: Path) -> bool:
        # an AssemblyScript project may hold .js files (its tooling); its assembly/ decides
        return super().detect(path) and not (path / "assembly").is_dir()

    def _tool(self, componentize) -> object:
        return componentize.componentize_qjs()

    def _build(self, componentize, root: Path, module: str, out: Path) -> None:
        componentize.build_js(root, out=out, module=module)


PYTHON = Python()
JAVASCRIPT = JavaScript()
