"""What a node process does with Python's garbage collector once it is set up.

A node allocates a few dozen objects per message (the message, its batch, futures, rows), and
under load many of them live just long enough to be promoted into the collector's oldest
generation. Every ~25 % growth of that generation then starts a full collection, which walks
every container object in the process: on a running node ~120,000, most of them imported code,
configuration and the node itself, none of which ever becomes garbage. Those full collections
took 100 ms each on average and up to 170 ms, on the event loop: they were the longest
latencies at 5k msg/s (60–80 ms), and 1.5 s of CPU in one benchmark run where they take 0.2 s
frozen (docs/benchmarks.md, "Full collections out of the way").

`freeze_heap` collects once, then moves everything alive into the collector's permanent
generation (`gc.freeze`), so later collections walk only what was made after it: the
messages in flight, the deployments and their instances. It is called by the process's owner
(`iotwasm up`, the `--workers` ingress) once the node, its API and its buses are built and
before the first message (its one full collection takes ~75 ms there, once, before the
routes subscribe); never by the library, because an object frozen and later dropped
in a reference cycle is never freed. What is frozen here lives as long as the process (modules,
the node, its stores, its API); the deployments, which are replaced and recycled, are made
later and stay collectable.
"""

from __future__ import annotations

import gc


def freeze_heap() -> int:
    """Collect, then freeze every object now alive; returns how many are frozen in all."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
