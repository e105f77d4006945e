"""What a module is: its bytes, digest, guest ABI, imports, exports and memory.

Inspection works from the binary alone, so it can run before anything is instantiated (and
before any capability is granted): the registry records it, the CLI prints it, and the
runtime refuses a module whose ABI or imports do not fit before running a single instruction.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import wasmtime
import wasmtime.component as wc

from ..errors import InvalidModule

WASM_MAGIC = b"\0asm"
CORE_VERSION = b"\x01\x00\x00\x00"
COMPONENT_VERSION = b"\x0d\x00\x01\x00"

ABI_V1 = "iotwasm-v1"
ABI_WASI = "wasi-command"
ABI_COMPONENT = "component"
ABI_NONE = "core"  # a valid core module that speaks none of our ABIs

V1_REQUIRED = ("memory", "iot_abi_version", "iot_alloc", "iot_process")
V1_MARKERS = ("iot_abi_version", "iot_process")

ModuleSource = bytes | bytearray | str | os.PathLike[str]


@dataclass(frozen=True, slots=True)
class ImportInfo:
    module: str
    name: str
    kind: str
    type: str


@dataclass(frozen=True, slots=True)
class ExportInfo:
    name: str
    kind: str
    type: str


@dataclass(frozen=True)
class ModuleInfo:
    name: str
    digest: str
    size: int
    abi: str
    imports: tuple[ImportInfo, ...] = ()
    exports: tuple[ExportInfo, ...] = ()
    memory_min_pages: int | None = None
    memory_max_pages: int | None = None
    problems: tuple[str, ...] = field(default=())

    @property
    def short_digest(self) -> str:
        return self.digest.split(":", 1)[1][:12]

    def export(self, name: str) -> ExportInfo | None:
        return next((e for e in self.exports if e.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "digest": self.digest,
            "size": self.size,
            "abi": self.abi,
            "memory": {"min_pages": self.memory_min_pages, "max_pages": self.memory_max_pages},
            "imports": [f"{i.module}.{i.name}: {i.type}" for i in self.imports],
            "exports": [f"{e.name}: {e.type}" for e in self.exports],
            "problems": list(self.problems),
        }


def info_to_record(info: ModuleInfo) -> dict[str, Any]:
    """Everything of `info` that depends on the bytes alone (not the name), for the compile
    cache: inspecting a compiled module through wasmtime-py costs more than loading it."""
    return {"digest": info.digest, "size": info.size, "abi": info.abi,
            "imports": [[i.module, i.name, i.kind, i.type] for i in info.imports],
            "exports": [[e.name, e.kind, e.type] for e in info.exports],
            "memory": [info.memory_min_pages, info.memory_max_pages],
            "problems": list(info.problems)}


def info_from_record(name: str, rec: dict[str, Any]) -> ModuleInfo:
    """Inverse of info_to_record; KeyError/TypeError/ValueError when `rec` is not one."""
    mem_min, mem_max = rec["memory"]
    return ModuleInfo(name, str(rec["digest"]), int(rec["size"]), str(rec["abi"]),
                      tuple(ImportInfo(*map(str, i)) for i in rec["imports"]),
                      tuple(ExportInfo(*map(str, e)) for e in rec["exports"]),
                      mem_min, mem_max, tuple(str(p) for p in rec["problems"]))


def digest_of(wasm: bytes) -> str:
    return "sha256:" + hashlib.sha256(wasm).hexdigest()


def read_file(path: str) -> bytes:
    """The whole file at `path`: open, size, one read, close. A load reads two files (the
    module and its compiled entry), and the file object's extra system calls and buffering
    cost more than the reads themselves.

    The one read asks for a byte more than the size: getting exactly the size means the end
    was reached. Anything else (a file that grew or shrank meanwhile, a file whose size says
    0 as in /proc, a short read of a network file system or of more than 2 GiB) is read on
    until the end."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        data = os.read(fd, size + 1)
        if len(data) == size:
            return data
        parts = [data]
        while chunk := os.read(fd, 1 << 20):
            parts.append(chunk)
        return b"".join(parts)
    finally:
        os.close(fd)


def read_source(source: ModuleSource, name: str | None = None) -> tuple[str, bytes]:
    """Return (name, wasm binary) from a path, wasm bytes, or WAT text/bytes.

    WAT is accepted everywhere a module is, and converted to the binary format; the digest is
    always that of the binary.
    """
    if isinstance(source, (str, os.PathLike)) and not _looks_like_wat_text(source):
        path = os.fspath(source)
        try:
            data = read_file(path)
        except OSError as e:
            raise InvalidModule(f"cannot read module file: {e.strerror}", module=path) from None
        name = name or Path(path).stem
    else:
        # a path is read above (a str either way): what is left is text or bytes
        data = source.encode() if isinstance(source, str) else bytes(source)  # type: ignore[arg-type]
        name = name or "module"
    if data[:4] == WASM_MAGIC:
        return name, data
    try:
        return name, bytes(wasmtime.wat2wasm(data.decode("utf-8")))
    except UnicodeDecodeError:
        raise InvalidModule("not a wasm binary (bad magic) and not WAT text", module=name) from None
    except wasmtime.WasmtimeError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "invalid"
        raise InvalidModule(f"not a wasm binary and not valid WAT: {first}", module=name) from None


def _looks_like_wat_text(source: ModuleSource) -> bool:
    return isinstance(source, str) and source.lstrip().startswith("(")


def _type_str(ty: object) -> tuple[str, str]:
    if isinstance(ty, wasmtime.FuncType):
        params = ", ".join(str(p) for p in ty.params)
        results = ", ".join(str(r) for r in ty.results)
        return "func", f"({params}) -> ({results})"
    if isinstance(ty, wasmtime.MemoryType):
        lim = ty.limits
        return "memory", f"pages {lim.min}..{'' if lim.max is None else lim.max}"
    if isinstance(ty, wasmtime.GlobalType):
        return "global", f"{'mut ' if ty.mutable else ''}{ty.content}"
    if isinstance(ty, wasmtime.TableType):
        return "table", f"{ty.element} {ty.limits.min}.."
    return "other", type(ty).__name__


def describe(name: str, wasm: bytes, module: wasmtime.Module | wc.Component,
             engine: wasmtime.Engine | None = None, *, hidden: frozenset[str] = frozenset()
             ) -> ModuleInfo:
    """Build ModuleInfo from the binary and its compiled form (a wasmtime.Module, or a
    wasmtime.component.Component with the engine it was compiled for); exports named in
    `hidden` were added by the host (engine/wasm_scan.py) and are not the module's."""
    digest = digest_of(wasm)
    if wasm[4:8] == COMPONENT_VERSION:
        from .component import describe_component

        if engine is None:
            raise ValueError("a component is described with the engine it was compiled for")
        return describe_component(name, wasm, cast(wc.Component, module), engine)
    module = cast(wasmtime.Module, module)  # the header says: a core module
    imports = []
    for imp in module.imports:
        kind, ty = _type_str(imp.type)
        imports.append(ImportInfo(imp.module, imp.name or "", kind, ty))
    exports = []
    mem_min = mem_max = None
    for exp in module.exports:
        if exp.name in hidden:
            continue
        kind, ty = _type_str(exp.type)
        exports.append(ExportInfo(exp.name, kind, ty))
        if isinstance(exp.type, wasmtime.MemoryType) and mem_min is None:  # kind == "memory"
            mem_min, mem_max = exp.type.limits.min, exp.type.limits.max
    names = {e.name for e in exports}
    problems: list[str] = []
    if any(m in names for m in V1_MARKERS):
        abi = ABI_V1
        problems += [f"missing export {r!r} required by {ABI_V1}" for r in V1_REQUIRED if r not in names]
    elif "_start" in names:
        abi = ABI_WASI
    else:
        abi = ABI_NONE
        problems.append(f"exports neither iot_process ({ABI_V1}) nor _start ({ABI_WASI})")
    return ModuleInfo(name, digest, len(wasm), abi, tuple(imports), tuple(exports),
                      mem_min, mem_max, tuple(problems))


def check_header(name: str, wasm: bytes) -> None:
    if len(wasm) < 8 or wasm[:4] != WASM_MAGIC:
        raise InvalidModule("not a wasm binary (bad magic)", module=name)
    if wasm[4:8] not in (CORE_VERSION, COMPONENT_VERSION):
        raise InvalidModule(f"unsupported wasm binary version {wasm[4:8].hex()}", module=name)
