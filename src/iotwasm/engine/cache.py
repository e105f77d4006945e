"""On-disk cache of precompiled modules.

Compiling is ~1000x slower than deserializing a precompiled artifact, so compiled code is kept
on disk keyed by module digest + engine fingerprint (which includes the wasmtime version and
every engine flag that changes generated code). wasmtime trusts serialized bytes completely,
so each entry carries a checksum of its own: a truncated, corrupt or foreign file is detected,
deleted and recompiled instead of being handed to wasmtime.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Callable, TypeVar

import wasmtime

log = logging.getLogger("iotwasm.engine.cache")

_MAGIC = b"IOTWASM-CWASM-1\n"
_SUM = 32

#: a wasmtime.Module or a wasmtime.component.Component: both serialize the same way
Compiled = TypeVar("Compiled")


class CompileCache:
    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)  # entries: mkstemp's 0600
        self.hits = 0
        self.misses = 0
        self.rejected = 0

    def path_for(self, digest: str, fingerprint: str) -> Path:
        return self.directory / f"{digest.replace(':', '-')}.{fingerprint}.cwasm"

    def load(self, engine: wasmtime.Engine, digest: str, fingerprint: str,
             deserialize: Callable[[wasmtime.Engine, bytes], Compiled] = wasmtime.Module.deserialize,
             ) -> Compiled | None:
        """The cached compiled form of `digest`, or None; `deserialize` is the loader of its
        kind (`wasmtime.component.Component.deserialize` for components)."""
        path = self.path_for(digest, fingerprint)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            self.misses += 1
            return None
        except OSError as e:
            log.warning("compile cache: cannot read %s: %s; recompiling", path, e)
            self.misses += 1
            return None
        head = len(_MAGIC) + _SUM
        artifact = blob[head:]
        if (blob[: len(_MAGIC)] != _MAGIC
                or hashlib.blake2b(artifact, digest_size=_SUM).digest() != blob[len(_MAGIC):head]):
            return self._reject(path, "checksum mismatch (corrupt or truncated entry)")
        try:
            module = deserialize(engine, artifact)
        except wasmtime.WasmtimeError as e:
            return self._reject(path, f"wasmtime refused it: {str(e).splitlines()[0]}")
        self.hits += 1
        return module

    def _reject(self, path: Path, why: str) -> None:
        log.warning("compile cache: dropping %s: %s; recompiling", path.name, why)
        self.rejected += 1
        self.misses += 1
        path.unlink(missing_ok=True)
        return None

    def store(self, module, digest: str, fingerprint: str) -> None:
        artifact = bytes(module.serialize())
        blob = _MAGIC + hashlib.blake2b(artifact, digest_size=_SUM).digest() + artifact
        path = self.path_for(digest, fingerprint)
        # write-then-rename: a crash mid-write never leaves a half entry under the real name
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
            os.replace(tmp, path)
        except OSError as e:
            log.warning("compile cache: cannot write %s: %s", path, e)
            Path(tmp).unlink(missing_ok=True)
