"""Module names and versions: what may be one, the namespace a name belongs to, and the order
of versions that `name` and `name:latest` follow.

Split from `store` (the store itself); these are rules about strings, needing no store, and the
API decides who may publish under a name from `name_namespace` alone. `store` re-exports them.
"""

from __future__ import annotations

import re

from ..errors import ConfigError

# Names may contain '/' (vendor/filter) but never ':', which separates the version.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,127}")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
# Relaxed semantic versions: an optional 'v', one to three numeric parts (missing ones are 0),
# an optional pre-release and optional build metadata.
_SEMVER = re.compile(
    r"v?(0|[1-9]\d*)(?:\.(0|[1-9]\d*))?(?:\.(0|[1-9]\d*))?"
    r"(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?(?:\+[0-9A-Za-z.-]+)?")


def name_namespace(name: str) -> str:
    """The namespace a module name belongs to: `acme` for `acme/filter`, "" (the node's own)
    for `filter`. Names are scoped like this so that who may publish under a name follows from
    the name itself (the API lets a tenant publish under its own namespace only)."""
    head, sep, _ = name.partition("/")
    return head if sep else ""


def version_key(version: str) -> tuple:
    """Sort key for versions: semantic versions first, in semver precedence, then the rest.

    Pre-releases come before their release (1.0.0-rc.1 < 1.0.0); numeric pre-release parts
    compare as numbers. Strings that are not semantic versions ("dev", "nightly") sort after
    every semantic version, lexicographically among themselves. Equal precedence ("1.2" and
    "1.2.0", or differing build metadata) is broken by the raw string so the order is total.
    """
    m = _SEMVER.fullmatch(version)
    if m is None:
        return (1, version)
    core = tuple(int(p or 0) for p in m.group(1, 2, 3))
    pre = m.group(4)
    if pre is None:
        pre_key: tuple = (1,)  # a release sorts after all of its pre-releases
    else:
        pre_key = (0, tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split(".")))
    return (0, core, pre_key, version)


def check_name(name: str) -> None:
    """Refuse a malformed module name, or one a reference would read as a digest."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"invalid module name {name!r} (letters, digits, '.', '_', '-', '/'; "
                          "must start with a letter or digit; no ':')")
    if name == "sha256":
        raise ConfigError("'sha256' cannot be a module name: 'sha256:...' refers to a digest")


def check_version(version: str) -> None:
    """Refuse a malformed version, or "latest", which a reference reads as the highest."""
    if not isinstance(version, str) or not _VERSION.fullmatch(version):
        raise ConfigError(f"invalid version {version!r} (letters, digits, '.', '_', '-', '+'; "
                          "must start with a letter or digit)")
    if version == "latest":
        raise ConfigError("'latest' cannot be a version: name:latest always means the highest "
                          "version of name")
