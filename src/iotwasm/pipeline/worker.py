"""Guest calls off the event loop, handed over cheaply.

Guest code never runs on the event loop: a module that spins until its time limit would stall
the API, health probes, MQTT keep-alives and every other route for that long. A route lane (or
a rule runner, or an invocation server) hands each batch to a `Worker`: one long-lived thread
of its own that waits on a queue, runs the call (wasm releases the GIL, so it runs in
parallel with the loop) and wakes the loop with the result.

Why not `asyncio.to_thread`: the default executor is shared by the whole node (SQLite writes,
file reads, fsyncs) and has only min(32, CPUs + 4) threads, so a few tenants whose modules spin
at their limit would starve everyone else's blocking work; and it costs more per hand-off (a
context copy, a work item, an executor future chained to an asyncio future). A lane's worker
is busy only with that lane's batches, which run one at a time anyway. Figures:
docs/benchmarks.md, "Guest calls off the event loop".
"""

from __future__ import annotations

import asyncio
import queue
import threading
from typing import Any, Callable, TypeVar

T = TypeVar("T")

_STOP = None


def resolve(fut: asyncio.Future, result: Any) -> None:
    """Set `fut`'s result unless it is done already: a callback that may come after the
    awaiting task was cancelled, or after another wake-up (a timer racing a put) settled it."""
    if not fut.done():
        fut.set_result(result)


def _reject(fut: asyncio.Future, error: BaseException) -> None:
    if not fut.done():
        fut.set_exception(error)


class Worker:
    """One thread that runs blocking calls for an event loop, one at a time, in order.

    `await worker.run(fn, *args)` runs ``fn(*args)`` on the worker's thread and returns its
    result (or raises its exception) on the loop. Cancelling the await does not interrupt the
    call (guest calls are bounded by their time limit); its result is then dropped. The thread
    starts with the first call and ends with `close()`, after the call it is running.
    """

    __slots__ = ("name", "_jobs", "_thread", "_closed")

    def __init__(self, name: str):
        self.name = name
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False

    def run(self, fn: Callable[..., T], *args: Any) -> "asyncio.Future[T]":
        if self._closed:
            raise RuntimeError(f"worker {self.name} is closed")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
            self._thread.start()
        self._jobs.put((loop, fut, fn, args))
        return fut

    def _serve(self) -> None:
        get = self._jobs.get
        while True:
            job = get()
            if job is _STOP:
                return
            loop, fut, fn, args = job
            callback: Callable[[asyncio.Future, Any], None]
            try:
                result = fn(*args)
            except BaseException as e:  # handed to the awaiting task, whatever it is
                callback, value = _reject, e
            else:
                callback, value = resolve, result
            del job, fn, args
            try:
                loop.call_soon_threadsafe(callback, fut, value)
            except RuntimeError:
                pass  # the loop is closed: nobody is waiting any more

    def close(self) -> None:
        """Take no more calls; the thread ends after the call it is running, if any."""
        if not self._closed:
            self._closed = True
            self._jobs.put(_STOP)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()
