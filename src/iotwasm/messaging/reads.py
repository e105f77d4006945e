"""Reads into one buffer a connection keeps, instead of a new one per read.

A plain `asyncio.Protocol` is handed a new `bytes` object for every read, which the transport
allocates at its largest read size (256 KiB) and then shrinks to what arrived. 256 KiB is
above glibc's threshold for serving an allocation from its own mapping, so every read maps
fresh memory, faults its first page in, remaps it smaller, and unmaps it when the bytes are
done with: four trips into the kernel for a read of a few hundred bytes, and in a process
with other threads (a node's lane workers, its ticker) the unmap also interrupts the other
cores to flush their TLBs. At a few thousand messages a second that was a fifth of the kernel
time of a process that only read and acknowledged (docs/benchmarks.md, "Reads into a kept
buffer").

`BufferedReads` makes the protocol a `BufferedProtocol`: the transport reads into the one
buffer (`recv_into`; TLS transports too) and `data_received` gets a copy of just the bytes that
arrived, the size of the read, which the allocator serves from memory it already has.
The buffer also bounds a read: `READ_SIZE` bytes at most.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

#: the most one read takes (the transport's own default is 256 KiB): ~600 MQTT messages of
#: 100 bytes, more than a route takes in one batch
READ_SIZE = 64 * 1024


class BufferedReads(asyncio.BufferedProtocol):
    """A protocol that defines `data_received(data)` as a plain protocol would, read through
    one kept buffer (see the module's docstring)."""

    _read_view: memoryview | None = None
    #: what the connection does with the bytes of a read (each connection's own)
    data_received: Callable[[bytes], None]

    def get_buffer(self, sizehint: int) -> memoryview:
        view = self._read_view
        if view is None:
            view = self._read_view = memoryview(bytearray(READ_SIZE))
        return view

    def buffer_updated(self, nbytes: int) -> None:
        assert self._read_view is not None
        self.data_received(self._read_view[:nbytes].tobytes())
