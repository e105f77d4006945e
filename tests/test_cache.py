"""The compile cache: hits, and corrupt or foreign entries detected and recompiled."""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import zlib

import pytest

from iotwasm.engine import HostContext, Limits, Runtime, prepare
from iotwasm.engine.module import info_to_record
from iotwasm.engine.runtime import EngineSettings
from iotwasm.errors import InvalidModule
from iotwasm.message import Message

from conftest import ECHO_WAT


def echo_once(rt: Runtime) -> bytes:
    g = prepare(rt.load(ECHO_WAT, name="echo"), Limits(), HostContext("echo")).new_guest()
    return g.process([Message("t", b"ping")]).outputs[0].payload


def entries(d):
    return sorted(p for p in os.listdir(d) if p.endswith(".cwasm"))


def test_second_runtime_hits_the_disk_cache(tmp_path):
    with Runtime(tmp_path) as rt:
        assert echo_once(rt) == b"ping"
        assert (rt.cache.hits, rt.cache.misses) == (0, 1)
    assert len(entries(tmp_path)) == 1
    with Runtime(tmp_path) as rt:
        assert echo_once(rt) == b"ping"
        assert (rt.cache.hits, rt.cache.misses) == (1, 0)


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "garbage"])
def test_corrupt_entry_is_detected_and_recompiled(tmp_path, damage):
    with Runtime(tmp_path) as rt:
        echo_once(rt)
    path = tmp_path / entries(tmp_path)[0]
    blob = bytearray(path.read_bytes())
    if damage == "flip":
        blob[len(blob) // 2] ^= 0xFF
    elif damage == "truncate":
        blob = blob[: len(blob) // 3]
    elif damage == "empty":
        blob = bytearray()
    else:
        blob = bytearray(os.urandom(len(blob)))
    path.write_bytes(bytes(blob))
    with Runtime(tmp_path) as rt:
        assert echo_once(rt) == b"ping"  # no crash, right answer
        assert rt.cache.rejected == 1 and rt.cache.hits == 0
    with Runtime(tmp_path) as rt:  # and the entry was rewritten properly
        echo_once(rt)
        assert rt.cache.hits == 1


def test_entry_from_another_engine_setting_is_not_used(tmp_path):
    with Runtime(tmp_path) as rt:
        echo_once(rt)
        fuel = rt.settings_for(Limits(fuel=1000))
        plain = rt.settings_for(Limits())
        assert fuel.fingerprint() != plain.fingerprint()
        assert EngineSettings(stack=1 << 20).fingerprint() != EngineSettings().fingerprint()
        # a valid artifact of the plain engine renamed to the fuel engine's key must be refused
        src = tmp_path / entries(tmp_path)[0]
        digest = rt.load(ECHO_WAT).info.digest
        os.replace(src, rt.cache.path_for(digest, fuel.fingerprint()))
    with Runtime(tmp_path) as rt:
        rt.load(ECHO_WAT, limits=Limits(fuel=1000))
        assert rt.cache.rejected == 1


def test_invalid_module_is_refused_with_reason(runtime):
    with pytest.raises(InvalidModule, match=r"^bad: not a wasm binary"):
        runtime.load(b"\x00\x01garbage", name="bad")
    with pytest.raises(InvalidModule, match=r"^trunc: invalid wasm"):
        runtime.load(b"\x00asm\x01\x00\x00\x00\x01\x05", name="trunc")
    with pytest.raises(InvalidModule, match="not valid WAT"):
        runtime.load("(module (func (export \"f\") no.such.instruction))", name="badwat")
    with pytest.raises(InvalidModule, match=r"^typeerr: invalid wasm: .*type mismatch"):
        runtime.load("(module (func (export \"f\") i32.add))", name="typeerr")
    with pytest.raises(InvalidModule, match="cannot read module file"):
        runtime.load(os.path.join("/nonexistent", "m.wasm"))


def test_a_hit_describes_the_module_exactly_as_inspecting_it(tmp_path):
    """The description stored with the compiled code equals a fresh inspection, under the
    name of the load that asked (names are not part of the bytes)."""
    from conftest import EXAMPLES

    sources = [ECHO_WAT, EXAMPLES / "range_filter.wasm", EXAMPLES / "wasi_csv.wasm"]
    with Runtime(tmp_path) as rt:
        fresh = [rt.load(s, name=f"first{i}").info for i, s in enumerate(sources)]
    with Runtime(tmp_path) as rt:
        hits = [rt.load(s, name=f"again{i}").info for i, s in enumerate(sources)]
        assert (rt.cache.hits, rt.cache.misses) == (len(sources), 0)
        # and a second load in the same runtime reuses it under its own name again
        assert rt.load(sources[1], name="third").info.name == "third"
    for i, (a, b) in enumerate(zip(fresh, hits)):
        assert b.name == f"again{i}"
        assert dataclasses.replace(a, name=b.name) == b
    assert hits[0].abi == "iotwasm-v1" and hits[2].abi == "wasi-command"


@pytest.mark.parametrize("old", [b"IOTWASM-CWASM-1\n", b"IOTWASM-CWASM-3\n"])
def test_an_entry_of_an_older_format_is_replaced(tmp_path, caplog, old):
    with Runtime(tmp_path) as rt:
        echo_once(rt)
    path = tmp_path / entries(tmp_path)[0]
    path.write_bytes(old + bytes(32) + b"old artifact" + b"IOTWASM-CWASM-4\n")
    with Runtime(tmp_path) as rt:
        assert echo_once(rt) == b"ping"
        assert rt.cache.rejected == 1
    assert "older entry format" in caplog.text
    with Runtime(tmp_path) as rt:
        echo_once(rt)
        assert (rt.cache.hits, rt.cache.rejected) == (1, 0)


def test_a_description_of_another_module_is_refused(tmp_path):
    with Runtime(tmp_path) as rt:
        compiled = rt.load(ECHO_WAT, name="echo")
        fp = compiled.settings.fingerprint()
        record = info_to_record(compiled.info)
        record["digest"] = "sha256:" + "0" * 64
        rt.cache.store(compiled.module, compiled.info.digest, fp, record)  # well-formed CRC
    with Runtime(tmp_path) as rt:
        assert echo_once(rt) == b"ping"
        assert (rt.cache.hits, rt.cache.rejected) == (0, 1)


def _rewrite_description(path, desc: bytes, magic: bytes = b"IOTWASM-CWASM-5\n") -> None:
    """Replace an entry's description, keeping its artifact, with a checksum that matches."""
    blob = path.read_bytes()
    end = len(blob) - 16 - 8
    (n,) = struct.unpack_from("<I", blob, end)
    body = blob[:end - n] + desc + struct.pack("<I", len(desc))
    path.write_bytes(body + struct.pack("<I", zlib.crc32(body)) + magic)


def test_an_entry_of_format_4_with_a_json_description_is_replaced(tmp_path, caplog):
    with Runtime(tmp_path) as rt:
        record = info_to_record(rt.load(ECHO_WAT, name="echo").info)
    path = tmp_path / entries(tmp_path)[0]
    _rewrite_description(path, json.dumps(record).encode(), b"IOTWASM-CWASM-4\n")
    with Runtime(tmp_path) as rt:
        assert echo_once(rt) == b"ping"
        assert (rt.cache.hits, rt.cache.rejected) == (0, 1)
    assert "older entry format" in caplog.text
    with Runtime(tmp_path) as rt:
        assert echo_once(rt) == b"ping"
        assert (rt.cache.hits, rt.cache.rejected) == (1, 0)


@pytest.mark.parametrize("desc", [b"", b"\xff\x00garbage", b"[", b"N"])
def test_an_unreadable_description_with_a_good_checksum_is_refused(tmp_path, caplog, desc):
    """marshal refuses bytes it did not write; JSON text, truncation and a None are not a record."""
    with Runtime(tmp_path) as rt:
        echo_once(rt)
    _rewrite_description(tmp_path / entries(tmp_path)[0], desc)
    with Runtime(tmp_path) as rt:
        assert echo_once(rt) == b"ping"
        assert (rt.cache.hits, rt.cache.rejected) == (0, 1)
    assert "bad description" in caplog.text


def test_a_file_is_read_whole_whatever_its_size_says_and_its_reads_return(tmp_path, monkeypatch):
    """read_file trusts the size only for its first read: a file that reports 0 bytes (as
    /proc files do) is read to its end, and so is one whose reads come back short (a network
    file system, a read of more than 2 GiB)."""
    from iotwasm.engine import module
    from iotwasm.engine.module import read_file

    with open("/proc/self/mounts", "rb") as f:
        assert read_file("/proc/self/mounts") == f.read()
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(3 << 20))
    assert read_file(str(big)) == big.read_bytes()
    real_read = os.read
    monkeypatch.setattr(module.os, "read", lambda fd, n: real_read(fd, min(n, 100_000)))
    assert read_file(str(big)) == big.read_bytes()
