from __future__ import annotations

import ast
import os
import sqlite3
import stat
import threading
from pathlib import Path

import pytest

from iotwasm.engine import ModuleInfo
from iotwasm.errors import ConfigError, InvalidModule, ModuleNotFound
from iotwasm.registry import ModuleRecord, ModuleStore, version_key
from iotwasm.engine.module import digest_of, read_source


def wat(n: int = 0) -> str:
    """A minimal iotwasm-v1 module; each `n` gives different bytes and so a different digest."""
    return ('(module (memory (export "memory") 1) '
            '(func (export "iot_abi_version") (result i32) i32.const 1) '
            f'(func (export "iot_alloc") (param i32) (result i32) i32.const {1024 + n}) '
            '(func (export "iot_process") (param i32 i32 i32 i32 i32) (result i32) i32.const 0))')


def wasm(n: int = 0) -> bytes:
    return read_source(wat(n))[1]


@pytest.fixture
def store(tmp_path, runtime):
    s = ModuleStore(tmp_path / "store", runtime=runtime)
    yield s
    s.close()


def blobs(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "blobs" / "sha256").iterdir())


def index_rows(root: Path, table: str) -> list[tuple]:
    db = sqlite3.connect(root / "index.db")
    try:
        return db.execute(f"SELECT * FROM {table}").fetchall()
    finally:
        db.close()


# -- adding and resolving ---------------------------------------------------------------------
def test_add_and_resolve_every_ref_form(store):
    rec = store.add(wat(), name="filter", version="1.0.0")
    digest = digest_of(wasm())
    hexd = digest.split(":", 1)[1]
    assert isinstance(rec, ModuleRecord)
    assert rec.digest == digest
    assert rec.size == len(wasm())
    assert rec.abi == "iotwasm-v1"
    assert rec.name == "filter"
    assert rec.tags == ("filter:1.0.0",)
    assert isinstance(rec.info, ModuleInfo) and rec.info.export("iot_process") is not None

    for ref in (digest, f"sha256:{hexd[:12]}", f"sha256:{hexd[:30]}", hexd[:12], hexd[:12].upper(),
                hexd, "filter:1.0.0", "filter", "filter:latest"):
        assert store.resolve(ref) == digest, ref
        assert store.get(ref).digest == digest, ref
    assert store.read("filter") == wasm()


def test_blob_layout_and_mode(store):
    rec = store.add(wat(), name="filter", version="1")
    path = store.path("filter:1")
    assert path == store.root / "blobs" / "sha256" / rec.digest.split(":", 1)[1]
    assert path.read_bytes() == wasm()
    assert stat.S_IMODE(path.stat().st_mode) == 0o400
    assert (store.root / "index.db").is_file()


def test_index_uses_wal(store):
    store.add(wat())
    db = sqlite3.connect(store.root / "index.db")
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        db.close()


def test_add_accepts_path_bytes_and_wat_alike(store, tmp_path):
    f = tmp_path / "sensor.wasm"
    f.write_bytes(wasm(3))
    from_path = store.add(f)
    assert from_path.name == "sensor"  # the file's stem when no name is given
    assert store.add(wasm(3)).digest == from_path.digest
    assert store.add(wat(3)).digest == from_path.digest
    assert len(store.list()) == 1


def test_add_is_idempotent(store):
    first = store.add(wat(), name="filter", version="1.0.0")
    again = store.add(wat(), name="filter", version="1.0.0")
    other_name = store.add(wasm(), name="other")
    assert again == first
    assert other_name.digest == first.digest
    assert other_name.name == "filter"  # the first name is kept
    assert other_name.added_at == first.added_at
    assert len(blobs(store.root)) == 1
    assert len(index_rows(store.root, "modules")) == 1
    assert len(index_rows(store.root, "tags")) == 1


def test_version_given_without_name_is_refused(store):
    with pytest.raises(ConfigError, match="without a name"):
        store.add(wat(), version="1.0.0")
    assert store.list() == []


@pytest.mark.parametrize("name,version", [("bad name", "1"), ("a:b", "1"), ("sha256", "1"),
                                          ("", "1"), ("ok", "latest"), ("ok", "1 0"),
                                          ("ok", ":1")])
def test_invalid_names_and_versions(store, name, version):
    with pytest.raises(ConfigError):
        store.add(wat(), name=name, version=version)
    assert store.list() == []
    assert blobs(store.root) == []


# -- versions ---------------------------------------------------------------------------------
def test_version_ordering_is_semantic(store):
    d_120 = store.add(wat(1), name="filter", version="1.2.0").digest
    d_1100 = store.add(wat(2), name="filter", version="1.10.0").digest
    d_190 = store.add(wat(3), name="filter", version="1.9.0").digest
    assert store.versions("filter") == ["1.2.0", "1.9.0", "1.10.0"]
    assert store.resolve("filter") == d_1100
    assert store.resolve("filter:latest") == d_1100
    assert store.resolve("filter:1.2.0") == d_120
    assert store.resolve("filter:1.9.0") == d_190
    assert store.versions("nothing") == []


def test_version_key_order():
    ordered = ["0.9", "v1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta.2",
               "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0", "1.2.0", "1.10.0", "2", "10.0.0",
               "dev", "nightly"]
    import random
    shuffled = ordered[:]
    random.Random(7).shuffle(shuffled)
    assert sorted(shuffled, key=version_key) == ordered


def test_non_semver_versions_sort_after_semver(store):
    store.add(wat(1), name="app", version="2.0.0")
    dev = store.add(wat(2), name="app", version="dev").digest
    store.add(wat(3), name="app", version="10.1.0")
    assert store.versions("app") == ["2.0.0", "10.1.0", "dev"]
    assert store.resolve("app") == dev


# -- immutable tags ---------------------------------------------------------------------------
def test_retagging_a_version_to_other_bytes_is_refused(store):
    original = store.add(wat(1), name="filter", version="1.0.0")
    with pytest.raises(ConfigError, match=r"filter:1\.0\.0 already points at"):
        store.add(wat(2), name="filter", version="1.0.0")
    # nothing of the refused module was stored
    assert store.resolve("filter:1.0.0") == original.digest
    assert [r.digest for r in store.list()] == [original.digest]
    assert blobs(store.root) == [original.digest.split(":", 1)[1]]

    other = store.add(wat(2))
    with pytest.raises(ConfigError, match="immutable"):
        store.tag(other.digest, "filter", "1.0.0")
    assert store.resolve("filter:1.0.0") == original.digest
    store.tag(original.digest, "filter", "1.0.0")  # same digest: a no-op, not a conflict


def test_force_repoints_a_version(store):
    store.add(wat(1), name="filter", version="1.0.0")
    replaced = store.add(wat(2), name="filter", version="1.0.0", force=True)
    assert store.resolve("filter:1.0.0") == replaced.digest
    third = store.add(wat(3))
    store.tag(third.digest, "filter", "1.0.0", force=True)
    assert store.resolve("filter:1.0.0") == third.digest
    assert store.get(replaced.digest).tags == ()


def test_tag_and_untag(store):
    rec = store.add(wat())
    store.tag(rec.digest[:19], "vendor/filter", "2.1.0")
    store.tag("vendor/filter:2.1.0", "vendor/filter", "stable")
    assert store.get(rec.digest).tags == ("vendor/filter:2.1.0", "vendor/filter:stable")
    store.untag("vendor/filter", "stable")
    assert store.get(rec.digest).tags == ("vendor/filter:2.1.0",)
    with pytest.raises(ModuleNotFound, match="vendor/filter:stable"):
        store.untag("vendor/filter", "stable")
    with pytest.raises(ModuleNotFound):
        store.resolve("vendor/filter:stable")


# -- verification -----------------------------------------------------------------------------
def test_tampered_blob_is_detected_on_read(store):
    rec = store.add(wat(), name="filter", version="1.0.0")
    path = store.path(rec.digest)
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(InvalidModule, match="does not match its digest"):
        store.read("filter:1.0.0")
    # adding the genuine bytes again repairs the blob
    store.add(wat())
    assert store.read("filter:1.0.0") == wasm()
    assert stat.S_IMODE(path.stat().st_mode) == 0o400


def test_missing_blob_is_reported(store):
    rec = store.add(wat(), name="filter", version="1")
    store.path(rec.digest).unlink()
    with pytest.raises(ModuleNotFound, match="missing"):
        store.read("filter:1")
    with pytest.raises(ModuleNotFound, match="missing"):
        store.path("filter:1")


@pytest.mark.parametrize("source", [
    b"\0asm\x01\x00\x00\x00\xff\xff",                 # right header, garbage body
    b"not a module at all",
    "(module (func (result i32)))",                   # WAT that does not type-check
    "(module (func $f (unknown_instruction)))",       # WAT that does not parse
])
def test_invalid_module_is_rejected_and_nothing_stored(store, source):
    with pytest.raises(InvalidModule):
        store.add(source, name="bad", version="1.0.0")
    assert store.list() == []
    assert blobs(store.root) == []
    assert index_rows(store.root, "modules") == []
    assert index_rows(store.root, "tags") == []
    with pytest.raises(ModuleNotFound):
        store.resolve("bad")


# -- removing ---------------------------------------------------------------------------------
def test_remove_tagged_module_needs_force(store):
    rec = store.add(wat(1), name="filter", version="1.0.0")
    with pytest.raises(ConfigError, match="filter:1.0.0"):
        store.remove("filter:1.0.0")
    assert store.read(rec.digest) == wasm(1)

    removed = store.remove("filter:1.0.0", force=True)
    assert removed.digest == rec.digest
    assert blobs(store.root) == []
    assert store.list() == []
    assert store.versions("filter") == []
    with pytest.raises(ModuleNotFound):
        store.resolve(rec.digest)


def test_remove_untagged_module(store):
    keep = store.add(wat(1), name="keep", version="1")
    rec = store.add(wat(2), name="drop", version="1")
    store.untag("drop", "1")
    store.remove(rec.digest)
    assert [r.digest for r in store.list()] == [keep.digest]
    assert blobs(store.root) == [keep.digest.split(":", 1)[1]]
    assert store.read("keep") == wasm(1)


def test_gc_removes_only_orphans(store):
    tagged = store.add(wat(1), name="a", version="1")
    untagged = store.add(wat(2))
    blob_dir = store.root / "blobs" / "sha256"
    orphan = blob_dir / digest_of(wasm(3)).split(":", 1)[1]
    orphan.write_bytes(wasm(3))
    (blob_dir / ".tmp-leftover").write_bytes(b"half a module")
    assert store.gc() == 2
    assert blobs(store.root) == sorted(d.split(":", 1)[1] for d in (tagged.digest, untagged.digest))
    assert store.read(untagged.digest) == wasm(2)
    assert store.gc() == 0


# -- persistence ------------------------------------------------------------------------------
def test_reopen_finds_everything(tmp_path, runtime):
    root = tmp_path / "store"
    with ModuleStore(root, runtime=runtime) as s:
        a = s.add(wat(1), name="a", version="1.0.0")
        b = s.add(wat(2), name="a", version="1.1.0")
        c = s.add(wat(3), name="b", version="dev")
        u = s.add(wat(4))
        before = s.list()
    with ModuleStore(root) as s:  # private runtime, created only if needed
        assert s.list() == before
        assert s.resolve("a") == b.digest
        assert s.resolve("a:1.0.0") == a.digest
        assert s.resolve("b:latest") == c.digest
        assert s.resolve(u.digest[:19]) == u.digest
        assert s.read("a:1.0.0") == wasm(1)
        assert s.get("a").info == b.info
        assert s._own_runtime is None


def test_list_is_sorted_by_name_then_version(store):
    store.add(wat(1), name="zeta", version="1.0.0")
    store.add(wat(2), name="alpha", version="1.10.0")
    store.add(wat(3), name="alpha", version="1.2.0")
    store.add(wat(4), name="alpha")  # untagged: after the tagged ones of its name
    listed = [(r.name, r.tags) for r in store.list()]
    assert listed == [("alpha", ("alpha:1.2.0",)), ("alpha", ("alpha:1.10.0",)), ("alpha", ()),
                      ("zeta", ("zeta:1.0.0",))]


# -- concurrency ------------------------------------------------------------------------------
def test_concurrent_adds_of_the_same_module(store):
    barrier = threading.Barrier(8)
    results, errors = [], []

    def worker():
        try:
            barrier.wait()
            results.append(store.add(wat(), name="filter", version="1.0.0").digest)
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert results == [digest_of(wasm())] * 8
    assert blobs(store.root) == [digest_of(wasm()).split(":", 1)[1]]
    assert len(index_rows(store.root, "modules")) == 1
    assert len(index_rows(store.root, "tags")) == 1


def test_concurrent_adds_from_separate_stores(tmp_path, runtime):
    """Eight stores on one directory behave like eight processes sharing it."""
    root = tmp_path / "shared"
    stores = [ModuleStore(root, runtime=runtime) for _ in range(8)]
    barrier = threading.Barrier(8)
    errors = []

    def worker(i):
        try:
            barrier.wait()
            stores[i].add(wat(), name="same", version="1")
            stores[i].add(wat(10 + i), name="mod", version=f"1.{i}.0")
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    assert errors == []
    with ModuleStore(root) as s:
        assert s.versions("mod") == [f"1.{i}.0" for i in range(8)]
        assert s.resolve("mod") == digest_of(wasm(17))
        assert len(s.list()) == 9
    assert len(blobs(root)) == 9
    assert len(index_rows(root, "modules")) == 9


# -- not found --------------------------------------------------------------------------------
@pytest.mark.parametrize("ref", ["nosuch", "nosuch:1.0.0", "nosuch:latest",
                                 "sha256:" + "0" * 64, "sha256:0123456789ab", "0123456789abcdef",
                                 "sha256:xyz", "sha256:abc"])
def test_not_found_names_the_ref(store, ref):
    store.add(wat(), name="filter", version="1.0.0")
    with pytest.raises(ModuleNotFound) as exc:
        store.resolve(ref)
    msg = str(exc.value)
    assert ref in msg
    assert "\n" not in msg
    with pytest.raises(ModuleNotFound):
        store.get(ref)
    with pytest.raises(ModuleNotFound):
        store.read(ref)


def test_short_prefix_is_refused(store):
    rec = store.add(wat())
    short = rec.digest[:7 + 11]
    with pytest.raises(ModuleNotFound, match="too short"):
        store.resolve(short)
    assert store.resolve(rec.digest[:7 + 12]) == rec.digest


def test_unknown_version_lists_the_known_ones(store):
    store.add(wat(1), name="filter", version="1.0.0")
    store.add(wat(2), name="filter", version="1.1.0")
    with pytest.raises(ModuleNotFound, match=r"'filter:2\.0\.0'.*1\.0\.0, 1\.1\.0"):
        store.resolve("filter:2.0.0")


def _insert_fake_rows(root: Path, digests: list[str]) -> None:
    db = sqlite3.connect(root / "index.db")
    with db:
        for d in digests:
            db.execute("INSERT INTO modules VALUES (?, 1, 'core', 'fake', 0, '{}')", (d,))
    db.close()


def test_ambiguous_prefix(store):
    prefix = "ab" * 6
    _insert_fake_rows(store.root, [f"sha256:{prefix}{'0' * 52}", f"sha256:{prefix}{'1' * 52}"])
    for ref in (f"sha256:{prefix}", prefix):
        with pytest.raises(ModuleNotFound, match="ambiguous") as exc:
            store.resolve(ref)
        assert ref in str(exc.value)
    assert store.resolve(f"sha256:{prefix}1") == f"sha256:{prefix}{'1' * 52}"


def test_hex_name_that_is_also_a_prefix_is_ambiguous(store):
    rec = store.add(wat(1))
    hexname = rec.digest.split(":", 1)[1][:12]
    other = store.add(wat(2), name=hexname, version="1.0.0")
    with pytest.raises(ModuleNotFound, match="ambiguous"):
        store.resolve(hexname)
    assert store.resolve(f"{hexname}:latest") == other.digest
    assert store.resolve(f"sha256:{hexname}") == rec.digest


# -- housekeeping -----------------------------------------------------------------------------
def test_private_runtime_is_created_lazily_and_closed(tmp_path):
    s = ModuleStore(tmp_path / "s")
    assert s._own_runtime is None
    s.add(wat())
    rt = s._own_runtime
    assert rt is not None
    s.close()
    assert rt.ticker.stopped.is_set()
    with pytest.raises(ConfigError, match="closed"):
        s.resolve("anything")


def test_registry_imports_only_lower_layers():
    forbidden = {"container", "messaging", "pipeline", "node", "cli"}
    src = Path(__file__).resolve().parent.parent / "src" / "iotwasm" / "registry"
    for py in src.glob("*.py"):
        for node in ast.walk(ast.parse(py.read_text())):
            if isinstance(node, ast.ImportFrom):
                parts = (node.module or "").split(".")
                if node.level == 0:
                    assert parts[0] != "iotwasm" or parts[1] not in forbidden, (py, node.module)
                elif node.level == 2:  # from ..x: a sibling layer of iotwasm
                    assert parts[0] not in forbidden, (py, node.module)
                else:
                    assert node.level == 1, (py, node.module)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    parts = alias.name.split(".")
                    assert parts[0] != "iotwasm" or parts[1] not in forbidden, (py, alias.name)
