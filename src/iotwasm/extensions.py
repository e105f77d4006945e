"""The CPython extensions the project builds (scripts/setup.sh): loading one, or learning
that it is not there.

Each extension does in C the common case of a hot path whose reference stays in Python
(`engine/v1_native.py`: a guest's batch call; `pipeline/outbox_native.py`: the outbox's
group commit). A missing or stale build is not an error: its caller takes the Python path.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Callable

from .errors import ConfigError


def load_extension(path: Path, name: str, interface: int) -> ModuleType | None:
    """The extension module `name` built at `path`; None when it is not built, will not load
    (built for another interpreter) or speaks another `interface` than its caller's (built
    from an older source: setup.sh rebuilds it)."""
    if not path.exists():
        return None
    try:
        loader = importlib.machinery.ExtensionFileLoader(name, str(path))
        spec = importlib.util.spec_from_loader(name, loader)
        if spec is None:
            return None
        mod = importlib.util.module_from_spec(spec)
        loader.exec_module(mod)
    except (ImportError, OSError):
        return None
    return mod if getattr(mod, "INTERFACE", 1) == interface else None


#: how a caller asks for an extension's path: where it is built ("auto"), always (an error
#: when it is not built), or never
KINDS = ("auto", "native", "python")


def choose_native(kind: str, what: str, path: Path, load: Callable[[], ModuleType | None]) -> bool:
    """Whether a caller asking for `kind` takes the native path of `what` (its extension at
    `path`, loaded by `load`)."""
    if kind not in KINDS:
        raise ConfigError(f"{what} {kind!r} must be one of {', '.join(KINDS)}")
    if kind == "python":
        return False
    if load() is None:
        if kind == "native":
            raise ConfigError(f"native {what} unavailable: {path} is not built (run scripts/setup.sh)")
        return False
    return True
