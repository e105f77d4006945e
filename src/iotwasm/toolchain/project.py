"""A module project: a directory made by `iotwasm new` (source, manifest.yaml, samples.yaml)
or any directory or single source file a language recognises; building it into NAME.wasm
plus NAME.wasm.sha256 (the digest in `sha256sum` format)."""

from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import ConfigError
from .languages import BuildFailed, Language, detect

MANIFEST = "manifest.yaml"
SAMPLES = "samples.yaml"


@dataclass
class Project:
    path: Path          # the directory, or the single source file
    language: Language
    name: str           # the Deployment's name in manifest.yaml, else the directory's / file's

    @property
    def root(self) -> Path:
        return self.path.parent if self.path.is_file() else self.path

    @property
    def module(self) -> Path:
        return self.root / f"{self.name}.wasm"

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def samples(self) -> Path:
        return self.root / SAMPLES

    def sources(self) -> list[Path]:
        files = self.language.sources(self.path)
        return [*files, *(p for p in (self.manifest, self.samples) if p.is_file())]


def open_project(path: Path) -> Project:
    path = Path(path)
    if not path.exists():
        raise BuildFailed(f"{path}: no such file or directory")
    lang = detect(path)
    name = path.stem if path.is_file() else _deployment_name(path) or path.resolve().name
    return Project(path, lang, name)


def _deployment_name(root: Path) -> str | None:
    try:
        docs = list(yaml.safe_load_all((root / MANIFEST).read_text()))
    except FileNotFoundError:
        return None
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{root / MANIFEST}: cannot read: {e}") from None
    for d in docs:
        if isinstance(d, dict) and d.get("kind") == "Deployment":
            name = (d.get("metadata") or {}).get("name")
            if isinstance(name, str) and re.fullmatch(r"[a-z0-9][-a-z0-9]*", name):
                return name
    return None


@dataclass
class BuildResult:
    module: Path
    digest: str          # sha256:<hex>
    size: int
    seconds: float
    output: str          # warnings the toolchain printed


def build(project: Project, out: Path | None = None) -> BuildResult:
    """Run the project's toolchain; the module is written atomically next to its digest file."""
    out = Path(out) if out else project.module
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    started = time.perf_counter()
    try:
        output = project.language.build(project.path, tmp)
        data = tmp.read_bytes()
        os.chmod(tmp, 0o644)   # linkers mark their output executable; a module is data
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    hexdigest = hashlib.sha256(data).hexdigest()
    out.with_name(out.name + ".sha256").write_text(f"{hexdigest}  {out.name}\n")
    return BuildResult(out, f"sha256:{hexdigest}", len(data), time.perf_counter() - started, output)
