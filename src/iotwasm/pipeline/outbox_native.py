"""The outbox's group commit in native code (native/outbox_writer.c): loading it, choosing it.

Python's sqlite3 module releases the GIL around every statement step. An append of a batch's
16 rows through it (BEGIN, the DELETE of the acknowledged rows, 16 INSERT steps, COMMIT)
gives the GIL away about 20 times, and while a lane's thread runs guest calls each of those
is a wake-up and a context switch on both threads. Replayed at 5k msg/s
(benchmarks/e2e/replay.py), the group commit cost the event loop's thread 282 µs per
transaction, against ~90 µs for the same statements with no other thread running. The
extension reads the rows out of their Python objects with the GIL held, then runs the whole
transaction without it: one hand-over instead of twenty.

It covers the common transaction only (no row dropped for the outbox's bound, every
acknowledged range's size known, values of plain types); the outbox writes anything else in
Python, which stays the reference, and `Outbox(writes="python")` writes everything there (the
tests run both). It is built by scripts/setup.sh for the venv's interpreter; without it the
outbox writes in Python.

The extension calls the SQLite that Python's sqlite3 module loaded, found through that
module's own library: two copies of SQLite in one process would not see each other's locks
on the file. It opens a connection of its own to the outbox file, with the settings of the
outbox's connection (`sqlite.open_db`); every write of the outbox happens under its lock, on
one connection or the other.
"""

from __future__ import annotations

import ctypes
import functools
import sqlite3
import sysconfig
from pathlib import Path
from types import ModuleType

from ..extensions import choose_native, load_extension

#: the extension's interface this code speaks (its `INTERFACE`)
INTERFACE = 1
EXTENSION = Path(__file__).parent / "native" / f"iotwasm_outbox_writer{sysconfig.get_config_var('EXT_SUFFIX')}"
#: the SQLite functions the extension calls, in the order its `bind` takes them
FUNCTIONS = ("sqlite3_open_v2", "sqlite3_close_v2", "sqlite3_prepare_v2", "sqlite3_step",
             "sqlite3_reset", "sqlite3_finalize", "sqlite3_clear_bindings", "sqlite3_bind_int64",
             "sqlite3_bind_double", "sqlite3_bind_text", "sqlite3_bind_blob", "sqlite3_bind_null",
             "sqlite3_extended_errcode", "sqlite3_get_autocommit", "sqlite3_errmsg",
             "sqlite3_busy_timeout", "sqlite3_exec")
#: primary result codes Python's sqlite3 raises as other classes than OperationalError
_CLASSES: dict[int, type[sqlite3.Error]] = {19: sqlite3.IntegrityError, 11: sqlite3.DatabaseError,
                                            26: sqlite3.DatabaseError}


@functools.cache
def _extension() -> ModuleType | None:
    """The extension, loaded and bound to Python's SQLite once per process; None when it is
    not built, will not load, or that SQLite's functions cannot be found."""
    mod = load_extension(EXTENSION, "iotwasm_outbox_writer", INTERFACE)
    if mod is None:
        return None
    try:
        import _sqlite3

        # the sqlite3 module's library, already loaded: a lookup in it finds SQLite's functions
        # in the library it was linked with (or in itself, when SQLite is built in)
        lib = ctypes.CDLL(_sqlite3.__file__)
        mod.bind(*(ctypes.cast(getattr(lib, f), ctypes.c_void_p).value or 0 for f in FUNCTIONS))
    except (ImportError, OSError, AttributeError, ValueError):
        return None
    return mod


def use_native(kind: str) -> bool:
    """Whether an outbox asking for `kind` writes its common transactions natively."""
    return choose_native(kind, "outbox writes", EXTENSION, _extension)


class NativeWriter:
    """A connection of its own to an outbox file that writes one group commit per call."""

    def __init__(self, path: Path, busy_timeout_s: float):
        mod = _extension()
        assert mod is not None, "use_native() said yes"
        self._writer = mod.Writer(str(path), int(busy_timeout_s * 1000))

    def append(self, deletes: list[tuple[str, int, int]], rows: list[tuple]) -> bool:
        """In one transaction: delete each (sink, first id, last id) range and insert the
        rows (id, sink, topic, payload, created, envelope). True: committed. False: nothing
        was done, the values are for the Python path. Raises the `sqlite3.Error` Python's
        sqlite3 would have raised (rolled back: none of it was stored)."""
        res = self._writer.append(deletes, rows)
        if res is None:
            return True
        if res is NotImplemented:
            return False
        code, message = res
        err = _CLASSES.get(code & 0xFF, sqlite3.OperationalError)(message)
        err.sqlite_errorcode = code   # what `sqlite.storage_error` reads
        raise err

    def close(self) -> None:
        self._writer.close()
