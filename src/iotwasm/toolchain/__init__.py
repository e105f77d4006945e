"""The developer toolchain: scaffold a module project, build it with its language's compiler,
run its samples in the engine. Used by `iotwasm new | build | test | dev`; not part of the
engine (a node never compiles anything).

Public surface: `LANGUAGES` / `language()` (the toolchain registry), `open_project()` and
`build()`, `new_project()` and `TEMPLATES`, `run_samples()`; errors `ToolchainMissing`
(one line saying what to install), `BuildFailed`, `NotAvailable`.
"""

from __future__ import annotations

from .languages import (
           LANGUAGES,
           BuildFailed,
           Language,
           NotAvailable,
           ToolchainMissing,
           language,
           sdk_root,
)
from .project import BuildResult, Project, build, open_project
from .samples import Report, SampleResult, run_samples
from .scaffold import TEMPLATES, listing, new_project

__all__ = [
           "LANGUAGES",
           "TEMPLATES",
           "BuildFailed",
           "BuildResult",
           "Language",
           "NotAvailable",
           "Project",
           "Report",
           "SampleResult",
           "ToolchainMissing",
           "build",
           "language",
           "listing",
           "new_project",
           "open_project",
           "run_samples",
           "sdk_root",
]
