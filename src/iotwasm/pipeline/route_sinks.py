"""A route's batch out to its sinks: hand-over, confirmation, dead letters.

Split from `route` (`RouteRunner`: intake, lanes, batching); `route` re-exports `confirmed_ok`.
`RouteSinks` is a mixin of `RouteRunner`: it gives a batch to each sink in order,
holding and retrying a sink that fails on storage, awaits the sinks' confirmations (an
uplink's acknowledgements) off the lane, and only then settles the batch's messages with
their sources; what a step or a sink could not take becomes a dead letter (`dead_letter`),
counted and written by the route's handler. It stands alone as the part of a route that
waits on storage and uplinks.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Awaitable

from ..errors import IotwasmError, StorageError
from ..message import DeadLetter, Message
from ..messaging.bus import settled
from .route_state import BatchTrace, RouteState, Sink, Flow, Item, settle

log = logging.getLogger("iotwasm.pipeline")


class RouteSinks(RouteState):
    """The sinks and dead letters of `RouteRunner` (a mixin: the state lives on the runner)."""

    async def _hand_to(self, sink: Sink, msgs: list[Message], variables: list[dict[str, str]]):
        """Give the batch to one sink; returns what confirms it. A storage error holds the
        batch right here and retries this sink (not those that took it already) until it
        took the batch; any other error of the sink fails the batch's messages there."""
        submit = getattr(sink, "submit", None)

        async def attempt():
            if submit is None:
                return settled(await sink.deliver(msgs, variables))
            return await submit(msgs, variables)

        try:
            return await self.storage.run(attempt)
        except IotwasmError as e:
            return settled([(i, e) for i in range(len(msgs))])

    async def _taken(self, sink: Sink, msgs: list[Message], variables: list[dict[str, str]]):
        return await (await self._hand_to(sink, msgs, variables))

    async def _confirm(self, flow: "Flow", confirms: list, items: list[Item], trace: BatchTrace | None,
                       span: object | None) -> None:
        try:
            await self._confirmed(flow, confirms, trace)
        except asyncio.CancelledError:
            settle(items, cancel=True)
            raise
        finally:
            if trace is not None:
                trace.end(span, len(flow.msgs), self._span_dead.pop(id(span), 0))
        settle(items)

    async def _confirmed(self, flow: "Flow", confirms: list, trace: BatchTrace | None = None) -> None:
        msgs, variables = flow.msgs, flow.vars
        for sink, confirm, sink_span in confirms:
            try:
                try:
                    failures = await confirm
                except StorageError:   # the sink could not keep it after all: again, held
                    failures = await self.storage.run(functools.partial(self._taken, sink, msgs, variables))
            except IotwasmError as e:
                failures = [(i, e) for i in range(len(msgs))]
            except Exception as e:  # noqa: BLE001 - kept as dead letters, not counted as delivered
                self._faults.failed(e)
                err = IotwasmError(f"sink {sink.name} failed unexpectedly: {type(e).__name__}: {e}")
                failures = [(i, err) for i in range(len(msgs))]
            if trace is not None:
                trace.end_sink(sink_span, len(failures))
            for i, failure in failures:
                log.warning("route %s: sink %s: %s", self.name, sink.name, failure)
                await self.dead_letter(sink.name, DeadLetter(i, msgs[i], failure), variables[i])
        self._delivered(flow)

    def _delivered(self, flow: "Flow") -> None:
        self.stats.delivered += len(flow.msgs)
        now = time.monotonic()
        self.stats.latencies_ms.extend((now - a) * 1000 for a in flow.arrived)

    async def dead_letter(self, where: str, dl: DeadLetter, variables: dict[str, str]) -> None:
        """Make `dl` a dead letter of this route that arose at `where` (a step's deployment, a
        sink, or "route"): counted once in `stats`, then written by the route's handler —
        held and retried while that fails on storage, as a sink's batch is. The route's own
        dead letters come here, and so do (through the node) the messages an uplink refused
        for good after they were stored in the outbox."""
        self.stats.dead_letters += 1
        self.stats.dead_by[where] += 1
        self.stats.last_dead[where] = (time.time(), str(dl.error))
        handler = self._on_dead
        if handler is not None:
            try:   # a dead letter that cannot be written yet holds the batch, as a sink would
                await self.storage.run(lambda: handler(self.name, where, dl, variables))
            except Exception as e:  # noqa: BLE001 - logged once; the batch goes on
                self._faults.failed(e)


def confirmed_ok(confirm: Awaitable) -> bool:
    """Whether a sink's confirmation is already in, without a failure (`Sink.submit`)."""
    return (isinstance(confirm, asyncio.Future) and confirm.done() and not confirm.cancelled()
            and confirm.exception() is None and not confirm.result())
