"""The steps of a route's batch, run on its lane's worker thread.

Split from `route` (`RouteRunner`: intake, lanes, batching).
`RouteSteps` is a mixin of `RouteRunner`: one call (`_chain`) runs every step of a batch
in one hop to the lane's thread, checks each message a step would receive and each
output it would emit against the step's topic grants (decisions memoised per step and
topic), and collects what a step refused or could not handle as dead letters. It stands
alone as the part of a route that never runs on the event loop.
"""

from __future__ import annotations

import logging
from typing import Callable

from ..errors import CapabilityDenied, ContainerUnavailable, IotwasmError
from ..message import DeadLetter, Message
from .route_state import BatchTrace, RouteState, Step, Flow

log = logging.getLogger("iotwasm.pipeline")


class RouteSteps(RouteState):
    """The steps of `RouteRunner`'s batches (a mixin: the state lives on the runner)."""

    def _chain(self, first: int, flow: "Flow", trace: BatchTrace | None = None, span: object | None = None):
        """Run steps[first:] on a batch (on the lane's worker thread, never on the loop),
        inside the batch's span when it is traced, so each step's span is a child of it.

        Returns the final flow, the dead letters to report, the number of ACL denials, and
        (step index, error) when a step was unavailable — the flow is then that step's input.
        """
        if trace is None:
            return self._steps(first, flow)
        token = trace.enter(span)
        try:
            return self._steps(first, flow)
        finally:
            trace.leave(token)

    def _steps(self, first: int, flow: "Flow"):
        dead: list[tuple[str, DeadLetter, dict]] = []
        denied = 0
        for k in range(first, len(self.steps)):
            if not flow.msgs:
                break
            step = self.steps[k]
            acl = step.acl
            can_receive = self._checker(step, "subscribe")
            can_emit = self._checker(step, "publish")
            msgs, variables, arrived = flow.msgs, flow.vars, flow.arrived
            keep = [i for i, m in enumerate(msgs) if can_receive(m.topic)]
            if len(keep) != len(msgs):
                for i in sorted(set(range(len(msgs))) - set(keep)):
                    denied += 1
                    acl.stats.subscribe_denied += 1
                    err = CapabilityDenied(f"may not receive {msgs[i].topic!r} (subscribe grants: "
                                           f"{', '.join(acl.subscribe) or 'none'})", module=step.name)
                    log.warning("route %s: %s", self.name, err)
                    dead.append((step.name, DeadLetter(i, msgs[i], err), variables[i]))
                flow = Flow([msgs[i] for i in keep], [variables[i] for i in keep], [arrived[i] for i in keep])
                msgs, variables, arrived = flow.msgs, flow.vars, flow.arrived
                if not msgs:
                    break
            try:
                result = step.process(msgs)
            except ContainerUnavailable as e:
                return flow, dead, denied, (k, e)
            for d in result.dead_letters:
                dead.append((step.name, d, variables[d.index]))
            out = Flow([], [], [])
            for o in result.outputs:
                src = msgs[o.index]
                topic = o.topic or src.topic
                if not can_emit(topic):
                    denied += 1
                    acl.stats.publish_denied += 1
                    err = CapabilityDenied(f"may not emit on {topic!r} (publish grants: "
                                           f"{', '.join(acl.publish) or 'none'})", module=step.name)
                    log.warning("route %s: %s", self.name, err)
                    dead.append((step.name, DeadLetter(o.index, Message(topic, o.payload, src.timestamp_ms), err),
                                 variables[o.index]))
                    continue
                # the envelope (headers, MQTT 5 properties) of the input goes with what it
                # produced: a route passes a device's headers on to its sinks unchanged
                out.msgs.append(Message(topic, o.payload, src.timestamp_ms, src.envelope))
                out.vars.append(variables[o.index])
                out.arrived.append(arrived[o.index])
            flow = out
        return flow, dead, denied, None

    def _checker(self, step: Step, direction: str) -> Callable[[str], bool]:
        """A per-step, per-direction memo of ACL decisions: devices repeat their topics, and
        matching every message against every grant would cost more than the wasm call."""
        key = (id(step.acl), direction)
        entry = self._acl_memo.get(key)
        if entry is None or entry[0] is not step.acl:
            check = step.acl.can_subscribe if direction == "subscribe" else step.acl.can_publish
            memo: dict[str, bool] = {}

            def allowed(topic: str) -> bool:
                hit = memo.get(topic)
                if hit is None:
                    if len(memo) > 50_000:
                        memo.clear()
                    hit = memo[topic] = acl_allows(check, topic)
                return hit

            entry = self._acl_memo[key] = (step.acl, allowed)
        return entry[1]


def acl_allows(check: Callable[[str], bool], topic: str) -> bool:
    """An ACL check where a malformed topic (a module can emit anything) counts as denied."""
    try:
        return check(topic)
    except IotwasmError:
        return False
