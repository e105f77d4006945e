"""On-disk cache of precompiled modules.

Compiling is ~1000x slower than deserializing a precompiled artifact, so compiled code is kept
on disk keyed by module digest + engine fingerprint (which includes the wasmtime version and
every engine flag that changes generated code). wasmtime trusts serialized bytes completely,
so each entry carries a checksum of its own: a truncated, corrupt or foreign file is detected,
deleted and recompiled instead of being handed to wasmtime.

The checksum is CRC-32: it is there to catch damage (a torn write, truncation, bit rot), which
it does for every burst of up to 32 bits and all but 2^-32 of the rest, at 8 µs where a
cryptographic hash took 56 µs of a 150 µs load. A cryptographic hash would add nothing against
tampering: whoever can write the cache directory (0700) can rewrite its checksum as well.

An entry also carries the module's description (imports, exports, ABI: `ModuleInfo` without
its name), which depends only on the bytes: describing a module through wasmtime-py's type
objects costs more than deserializing it, so a cache hit reads both and inspects nothing.

Entry layout: magic, u32 CRC-32 of everything after it, u32 length of the description, the
description (JSON), the artifact.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import tempfile
import zlib
from pathlib import Path
from typing import Any, Callable

import wasmtime
import wasmtime.component as wc

log = logging.getLogger("iotwasm.engine.cache")

_MAGIC = b"IOTWASM-CWASM-3\n"
#: -2 entries hold code compiled without the exports a snapshot reads (engine/snapshot.py)
_OLD_MAGICS = (b"IOTWASM-CWASM-1\n", b"IOTWASM-CWASM-2\n")
_U32 = struct.Struct("<I")

#: a wasmtime.Module or a wasmtime.component.Component: both serialize the same way
Compiled = wasmtime.Module | wc.Component


class CompileCache:
    def __init__(self, directory: str | os.PathLike[str]):
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
        hit = self.load_entry(engine, digest, fingerprint, deserialize)
        return None if hit is None else hit[0]

    def load_entry(self, engine: wasmtime.Engine, digest: str, fingerprint: str,
                   deserialize: Callable[[wasmtime.Engine, bytes], Compiled] = wasmtime.Module.deserialize,
                   ) -> tuple[Compiled, dict[str, Any]] | None:
        """(compiled module, description record) of `digest`, or None on a miss."""
        path = self.path_for(digest, fingerprint)
        try:
            with open(path, "rb", buffering=0) as f:  # unbuffered: one sized read, no copy
                blob = f.readall()
        except FileNotFoundError:
            self.misses += 1
            return None
        except OSError as e:
            log.warning("compile cache: cannot read %s: %s; recompiling", path, e)
            self.misses += 1
            return None
        magic = blob[: len(_MAGIC)]
        if magic in _OLD_MAGICS:
            self._reject(path, "written in an older entry format")
            return None
        head = len(_MAGIC) + _U32.size
        body = memoryview(blob)[head:]
        if (magic != _MAGIC or len(blob) < head + _U32.size
                or zlib.crc32(body) != _U32.unpack_from(blob, len(_MAGIC))[0]):
            self._reject(path, "checksum mismatch (corrupt or truncated entry)")
            return None
        (n,) = _U32.unpack_from(body, 0)
        try:
            record = json.loads(bytes(body[_U32.size:_U32.size + n]))
            if not isinstance(record, dict) or record.get("digest") != digest:
                raise ValueError("description of another module")
        except ValueError as e:
            self._reject(path, f"bad description: {e}")
            return None
        artifact = bytes(body[_U32.size + n:])
        try:
            module = deserialize(engine, artifact)
        except wasmtime.WasmtimeError as e:
            self._reject(path, f"wasmtime refused it: {str(e).splitlines()[0]}")
            return None
        self.hits += 1
        return module, record

    def _reject(self, path: Path, why: str) -> None:
        log.warning("compile cache: dropping %s: %s; recompiling", path.name, why)
        self.rejected += 1
        self.misses += 1
        path.unlink(missing_ok=True)
        return None

    def store(self, module: Compiled, digest: str, fingerprint: str, record: dict[str, Any]) -> None:
        """Write the entry of `digest`: compiled `module` and its description `record`
        (`module.info_to_record`)."""
        desc = json.dumps(record, separators=(",", ":")).encode()
        body = _U32.pack(len(desc)) + desc + bytes(module.serialize())
        blob = _MAGIC + _U32.pack(zlib.crc32(body)) + body
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
