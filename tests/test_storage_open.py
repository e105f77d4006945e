"""Storage that cannot be opened: a read-only file system, a corrupt database, a directory that
cannot be created — each a `StorageError` that names the file and the operating system's
reason; and `iotwasm up` on such a data directory exits with that one line, no traceback.

The read-only cases put the files on a tmpfs of a few MiB (tests/smallfs.py) remounted
read-only.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ECHO_WAT
from smallfs import small_disk  # noqa: F401  (fixture)

from iotwasm.errors import IotwasmError, StorageError
from iotwasm.node.state import NodeState
from iotwasm.pipeline import LocalStore, Outbox
from iotwasm.sqlite import open_db

CLI = [sys.executable, "-m", "iotwasm.cli.main"]


# -- opening -----------------------------------------------------------------------------------
def test_a_read_only_file_system_is_a_storage_error_naming_the_file(small_disk):  # noqa: F811
    small_disk.read_only()
    path = small_disk.path / "outbox.db"
    with pytest.raises(StorageError) as e:
        open_db(path, synchronous="NORMAL", what="outbox")
    assert isinstance(e.value, IotwasmError) and e.value.kind == "storage"
    assert str(e.value).startswith(f"outbox {path}: ")
    assert "Read-only file system" in str(e.value)
    assert e.value.path == str(path)


def test_an_existing_database_on_a_read_only_file_system_is_refused_at_open(small_disk):  # noqa: F811
    path = small_disk.path / "node.db"
    NodeState(path).close()
    small_disk.read_only()
    with pytest.raises(StorageError) as e:
        NodeState(path)
    assert str(e.value).startswith(f"node state {path}: ")
    assert "Read-only file system" in str(e.value)


def test_a_corrupt_database_is_refused_at_open(tmp_path):
    path = tmp_path / "outbox.db"
    path.write_bytes(b"this is not a database, just bytes\n" * 200)
    with pytest.raises(StorageError) as e:
        Outbox(path)
    assert str(e.value) == f"outbox {path}: file is not a database"


def test_a_missing_directory_that_cannot_be_created_names_it(small_disk):  # noqa: F811
    small_disk.read_only()
    with pytest.raises(StorageError) as e:
        LocalStore(small_disk.path / "sub" / "store.db")
    assert f"store {small_disk.path / 'sub' / 'store.db'}: " in str(e.value)
    assert "Read-only file system" in str(e.value)


# -- `iotwasm up` at start ---------------------------------------------------------------------
def _up(manifests: Path, data: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "up", str(manifests), "--data", str(data), "--no-api", "--seconds", "1"],
                          capture_output=True, timeout=120, check=False)


@pytest.fixture
def manifests(tmp_path) -> Path:
    (tmp_path / "echo.wat").write_text(ECHO_WAT)
    p = tmp_path / "m.yaml"
    p.write_text(f"""
apiVersion: iotwasm.io/v1
kind: Deployment
metadata: {{name: echo}}
spec: {{module: {tmp_path / 'echo.wat'}}}
""")
    return p


def _one_line(r: subprocess.CompletedProcess) -> str:
    err = r.stderr.decode()
    assert r.returncode != 0, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_up_on_a_read_only_data_directory_exits_with_one_line(small_disk, manifests):  # noqa: F811
    small_disk.read_only()
    line = _one_line(_up(manifests, small_disk.path))
    assert str(small_disk.path) in line and "Read-only file system" in line


def test_up_with_its_databases_on_a_read_only_file_system_exits_with_one_line(small_disk, manifests):  # noqa: F811
    r = _up(manifests, small_disk.path)    # a first run creates everything
    assert r.returncode == 0, r.stderr.decode()
    small_disk.read_only()
    line = _one_line(_up(manifests, small_disk.path))
    assert str(small_disk.path) in line and ".db" in line and "Read-only file system" in line


def test_up_with_a_corrupt_node_database_exits_with_one_line(tmp_path, manifests):
    data = tmp_path / "data"
    data.mkdir()
    (data / "node.db").write_bytes(b"garbage " * 1000)
    line = _one_line(_up(manifests, data))
    assert line.endswith(f"node state {data / 'node.db'}: file is not a database")
