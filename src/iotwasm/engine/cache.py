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

Entry layout (format 5): the artifact exactly as wasmtime serialized it, the description
(`marshal`), u32 length of the description, u32 CRC-32 of everything before it, magic. The
artifact comes first so that wasmtime maps the file itself (`deserialize_file`: no copy of the
code into a fresh mapping, 45 against 109 µs for the range filter's 36 KB) and ignores what
follows its ELF image; the checksum is checked on one read of the file before that. The
description is marshal, not JSON, because a load is that much faster (JSON's decoder took ~10
µs of a ~100 µs load, marshal ~2); it is read only after the checksum passed, from a file that
only this cache writes and whose artifact wasmtime runs as native code, and any shape other
than the record's is refused like a corrupt entry. An entry of formats 1–4 (1–3 put the magic
first, 4 held JSON) is replaced by a recompile.
"""

from __future__ import annotations

import logging
import marshal
import os
import struct
import tempfile
import zlib
from pathlib import Path
from typing import Any, Callable

import wasmtime
import wasmtime.component as wc

from .module import read_file

log = logging.getLogger("iotwasm.engine.cache")

#: the last bytes of an entry
_MAGIC = b"IOTWASM-CWASM-5\n"
#: the first bytes of entries of older formats (-2 hold code compiled without the exports a
#: snapshot reads, engine/snapshot.py; -3 put the artifact last)
_OLD_MAGICS = (b"IOTWASM-CWASM-1\n", b"IOTWASM-CWASM-2\n", b"IOTWASM-CWASM-3\n")
#: the last bytes of an entry of format 4 (its description in JSON)
_OLD_TAIL = b"IOTWASM-CWASM-4\n"
#: before the magic: length of the description, CRC-32 of everything before the CRC
_TRAILER = struct.Struct("<II")
_U32 = struct.Struct("<I")

#: a wasmtime.Module or a wasmtime.component.Component: both serialize the same way
Compiled = wasmtime.Module | wc.Component


class CompileCache:
    def __init__(self, directory: str | os.PathLike[str]):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)  # entries: mkstemp's 0600
        self._prefix = os.path.join(self.directory, "")  # a string: no Path built per load
        self.hits = 0
        self.misses = 0
        self.rejected = 0

    def path_for(self, digest: str, fingerprint: str) -> Path:
        return Path(self._entry(digest, fingerprint))

    def _entry(self, digest: str, fingerprint: str) -> str:
        return f"{self._prefix}{digest.replace(':', '-')}.{fingerprint}.cwasm"

    def load(self, engine: wasmtime.Engine, digest: str, fingerprint: str,
             deserialize: Callable[[wasmtime.Engine, str], Compiled] = wasmtime.Module.deserialize_file,
             ) -> Compiled | None:
        """The cached compiled form of `digest`, or None; `deserialize` is the file loader of
        its kind (`wasmtime.component.Component.deserialize_file` for components)."""
        hit = self.load_entry(engine, digest, fingerprint, deserialize)
        return None if hit is None else hit[0]

    def load_entry(self, engine: wasmtime.Engine, digest: str, fingerprint: str,
                   deserialize: Callable[[wasmtime.Engine, str], Compiled] = wasmtime.Module.deserialize_file,
                   ) -> tuple[Compiled, dict[str, Any]] | None:
        """(compiled module, description record) of `digest`, or None on a miss."""
        path = self._entry(digest, fingerprint)
        try:
            blob = read_file(path)
        except FileNotFoundError:
            self.misses += 1
            return None
        except OSError as e:
            log.warning("compile cache: cannot read %s: %s; recompiling", path, e)
            self.misses += 1
            return None
        if blob[: len(_MAGIC)] in _OLD_MAGICS or blob[-len(_OLD_TAIL):] == _OLD_TAIL:
            self._reject(path, "written in an older entry format")
            return None
        end = len(blob) - len(_MAGIC) - _TRAILER.size  # where the description ends
        if end < 0 or blob[-len(_MAGIC):] != _MAGIC:
            self._reject(path, "checksum mismatch (corrupt or truncated entry)")
            return None
        n, crc = _TRAILER.unpack_from(blob, end)
        if n > end or zlib.crc32(memoryview(blob)[:end + 4]) != crc:
            self._reject(path, "checksum mismatch (corrupt or truncated entry)")
            return None
        try:
            record = marshal.loads(blob[end - n:end])
            if not isinstance(record, dict) or record.get("digest") != digest:
                raise ValueError("description of another module")
        except (ValueError, EOFError, TypeError) as e:
            self._reject(path, f"bad description: {e}")
            return None
        try:
            # wasmtime maps the file; entries are replaced by rename, never rewritten in place
            module = deserialize(engine, path)
        except wasmtime.WasmtimeError as e:
            self._reject(path, f"wasmtime refused it: {str(e).splitlines()[0]}")
            return None
        self.hits += 1
        return module, record

    def _reject(self, path: str, why: str) -> None:
        log.warning("compile cache: dropping %s: %s; recompiling", os.path.basename(path), why)
        self.rejected += 1
        self.misses += 1
        Path(path).unlink(missing_ok=True)
        return None

    def store(self, module: Compiled, digest: str, fingerprint: str, record: dict[str, Any]) -> None:
        """Write the entry of `digest`: compiled `module` and its description `record`
        (`module.info_to_record`)."""
        desc = marshal.dumps(record)
        body = bytes(module.serialize()) + desc + _U32.pack(len(desc))
        blob = body + _U32.pack(zlib.crc32(body)) + _MAGIC
        path = self._entry(digest, fingerprint)
        # write-then-rename: a crash mid-write never leaves a half entry under the real name
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
            os.replace(tmp, path)
        except OSError as e:
            log.warning("compile cache: cannot write %s: %s", path, e)
            Path(tmp).unlink(missing_ok=True)
