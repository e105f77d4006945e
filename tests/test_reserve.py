"""The disk reserve: made with real blocks when there is room, released only on a full disk.

The node-level behaviour (a restart on a full disk) is in tests/test_disk_full.py; these
check the reserve itself on a small real file system (tests/smallfs.py).
"""

from __future__ import annotations

from smallfs import SmallDisk

from iotwasm.node.reserve import MIN_RESERVE, RESERVE_NAME, DiskReserve


def test_the_reserve_takes_real_blocks_and_stays_while_there_is_room(tmp_path):
    disk = SmallDisk(tmp_path / "disk", "8m").mount()
    try:
        reserve = DiskReserve(disk.path)
        assert reserve.size == MIN_RESERVE   # 1 % of 8 MiB is below the minimum
        free = reserve.free_bytes()
        assert reserve.settle() is False and not reserve.missing
        st = (disk.path / RESERVE_NAME).stat()
        assert st.st_size == reserve.size and st.st_blocks * 512 >= reserve.size   # not sparse
        assert reserve.free_bytes() <= free - reserve.size
        again = DiskReserve(disk.path)       # the next start: room left, so it stays
        assert again.settle() is False and (disk.path / RESERVE_NAME).exists()
    finally:
        disk.unmount()


def test_released_only_on_a_full_disk_and_made_again_once_there_is_room_twice_over(tmp_path):
    disk = SmallDisk(tmp_path / "disk", "8m").mount()
    try:
        DiskReserve(disk.path).settle()
        disk.fill()
        reserve = DiskReserve(disk.path)
        assert reserve.settle() is True and reserve.missing
        assert not (disk.path / RESERVE_NAME).exists()
        assert reserve.restore() is False            # the room it freed is not enough twice
        assert sorted(p.name for p in disk.path.iterdir() if RESERVE_NAME in p.name) == []
        disk.free()
        assert reserve.restore() is True and not reserve.missing
        assert (disk.path / RESERVE_NAME).stat().st_size == reserve.size
    finally:
        disk.unmount()


def test_the_check_for_stranded_outboxes_starts_on_a_full_disk(tmp_path):
    # `up --workers 2` on a data directory whose outbox.db (a run without workers) still holds
    # messages must say so, also when the disk is full: opening the outbox even read-only
    # creates its WAL index, which the reserves make room for, as they do for a node's start
    import sqlite3

    import pytest

    from iotwasm.cli.workers import check_stranded
    from iotwasm.errors import ConfigError

    disk = SmallDisk(tmp_path / "disk", "8m").mount()
    try:
        db = sqlite3.connect(disk.path / "outbox.db")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE outbox (id INTEGER PRIMARY KEY, body BLOB)")
        db.executemany("INSERT INTO outbox (body) VALUES (?)", [(b"m",)] * 3)
        db.commit()
        db.close()   # the last connection: its -wal and -shm files go
        assert not (disk.path / "outbox.db-shm").exists()
        for k in range(2):
            (disk.path / "workers" / str(k)).mkdir(parents=True)
            DiskReserve(disk.path / "workers" / str(k)).settle()
        disk.fill()
        with pytest.raises(ConfigError, match=r"outbox.db holds 3 message\(s\) for uplinks"):
            check_stranded(disk.path, 2)
        # one reserve released was room enough; the other stays for its worker's start
        assert sorted(p.parent.name for p in disk.path.rglob(RESERVE_NAME)) == ["1"]
    finally:
        disk.unmount()


def test_a_reserve_smaller_than_it_should_be_is_made_again(tmp_path):
    """A reserve made when the file system was smaller (1 % of it) is short of today's size:
    a start with room makes it again at its full size, as it does a missing one."""
    (tmp_path / RESERVE_NAME).write_bytes(b"\0" * 1024)
    reserve = DiskReserve(tmp_path, size=MIN_RESERVE)
    assert reserve.settle() is False
    assert (tmp_path / RESERVE_NAME).stat().st_size == MIN_RESERVE
    assert reserve.missing is False
