"""The toolchain registry: one entry per language, each a small `Language` (name, detect,
toolchain check, build) in its own module. A new language is one more module and one more
line in LANGUAGES; templates for it go in toolchain/templates/<template>/<name>/."""

from __future__ import annotations

from pathlib import Path

from .assemblyscript import LANGUAGE as ASSEMBLYSCRIPT
from .base import (
    BuildFailed,
    Language,
    NotAvailable,
    ToolchainMissing,
    cache_home,
    sdk_root,
)
from .c import LANGUAGE as C
from .components import JAVASCRIPT, PYTHON
from .rust import LANGUAGE as RUST

#: in the order `iotwasm new --list` shows them; detection tries them in this order too
LANGUAGES: dict[str, Language] = {lang.name: lang for lang in (C, RUST, ASSEMBLYSCRIPT, PYTHON, JAVASCRIPT)}


def language(name: str) -> Language:
    try:
        return LANGUAGES[name]
    except KeyError:
        raise NotAvailable(f"unknown language {name!r} (known: {', '.join(LANGUAGES)})") from None


def detect(path: Path) -> Language:
    """The language of a project directory or source file."""
    for lang in LANGUAGES.values():
        if lang.detect(path):
            return lang
    raise BuildFailed(f"{path}: no module source found (a .c file, Cargo.toml, assembly/index.ts, "
                      "a .ts file, main.py or a .py file, index.js or a .js file)")


__all__ = [
    "LANGUAGES",
    "BuildFailed",
    "Language",
    "NotAvailable",
    "ToolchainMissing",
    "cache_home",
    "detect",
    "language",
    "sdk_root",
]
