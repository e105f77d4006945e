"""Registry layer: a local, content-addressed store of modules with immutable name:version tags.

Public surface:
- `ModuleStore(root, runtime=None)`: `add`, `resolve`, `get`, `read`, `path`, `list`,
  `versions`, `tag`, `untag`, `remove`, `gc`.
- `ModuleRecord`: what the store knows about one digest (size, ABI, name, tags, ModuleInfo).
- `version_key`: the version ordering used for `name` / `name:latest`.
- `name_namespace`: the namespace a module name belongs to (`acme/filter` → `acme`).

See docs/registry.md for the layout on disk and the reference forms.
"""

from __future__ import annotations

from .store import MIN_PREFIX, ModuleRecord, ModuleStore, name_namespace, version_key

__all__ = ["MIN_PREFIX", "ModuleRecord", "ModuleStore", "name_namespace", "version_key"]
