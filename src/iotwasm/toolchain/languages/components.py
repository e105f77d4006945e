"""Languages whose modules are components (docs/abi.md, "Component ABI"): Python and
JavaScript. A project is a directory with the module (`main.py`, `index.js`) on the SDK
(sdk/python, sdk/js), or a single source file; `toolchain.componentize` builds it, linking the
host interfaces of the capabilities manifest.yaml grants, and caches the result by the digest
of its inputs, so an unchanged project is not rebuilt (componentize-py takes seconds)."""

from __future__ import annotations

from pathlib import Path

from .base import Language


class Component(Language):
    abi = "component"
    #: the module a project directory must have
    entry = ""
    suffix = ""
    #: a component carries an interpreter: it needs more memory, fuel and time than a core
    #: module doing the same work (measured on the templates' samples: docs/tutorial)
    resources = "{memory: 64Mi, fuel: 2G, timeout: 1s}"

    def detect(self, path: Path) -> bool:
        if path.is_file():
            return path.suffix == self.suffix
        return (path / self.entry).is_file()

    def _split(self, path: Path) -> tuple[Path, str]:
        """(project directory, module) for a directory or a single source file."""
        if path.is_file():
            return path.parent, path.name
        return path, self.entry

    def check(self) -> None:
        from .. import componentize

        self._tool(componentize)

    def _tool(self, componentize) -> object:
        raise NotImplementedError

    def build(self, path: Path, out: Path) -> str:
        from .. import componentize

        root, module = self._split(path)
        self._tool(componentize)
        self._build(componentize, root, module, out)
        return ""

    def _build(self, componentize, root: Path, module: str, out: Path) -> None:
        raise NotImplementedError


class Python(Component):
    name = "python"
    title = "Python"
    toolchain = "componentize-py 0.25.1, sdk/python"
    entry = "main.py"
    suffix = ".py"
    watch = ("**/*.py",)

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
    watch = ("**/*.js", "**/*.mjs", "**/*.json")

    def detect(self, path: Path) -> bool:
        # an AssemblyScript project may hold .js files (its tooling); its assembly/ decides
        return super().detect(path) and not (path / "assembly").is_dir()

    def _tool(self, componentize) -> object:
        return componentize.componentize_qjs()

    def _build(self, componentize, root: Path, module: str, out: Path) -> None:
        componentize.build_js(root, out=out, module=module)


PYTHON = Python()
JAVASCRIPT = JavaScript()
