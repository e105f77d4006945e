"""NATS subscriptions and the flow of incoming core messages.

`NatsInbound` is the part of `NatsBus` that subscribes: a core subscription (one or two
subjects, NATS queue groups) whose messages go straight into the subscription's queue, or,
with `durable`, a JetStream durable consumer (nats_jetstream.py); subscriptions made before
the connection is up are set up once it is, and again after a reconnect if they were not.
"""

from __future__ import annotations

import logging
from typing import Any

import nats.errors
from nats.aio.msg import Msg as NatsMsg
from nats.aio.subscription import Subscription as CoreSubscription

from ..errors import ConfigError
from ..message import Message
from .bus import Handler, Subscription, check_qos
from .errors import BrokerUnavailable
from .nats_jetstream import JetStreamSubscription
from .nats_state import NatsState
from .topics import (
    OrderKey,
    from_nats_subject,
    matches,
    nats_subjects_for_filter,
    to_nats_subject,
    validate_filter,
)

log = logging.getLogger("iotwasm.messaging.nats")


def _reserved(subject: str) -> bool:
    first = subject.split(".", 1)[0]
    return first.startswith("$") or first == "_INBOX"


class NatsSubscription(Subscription):
    """A core NATS subscription (one or two subjects feeding one handler queue)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.subjects: list[str] = []
        self.established = False
        self._nats_subs: list[CoreSubscription] = []

    def _upstream_pending(self) -> int:
        return sum(s.pending_msgs for s in self._nats_subs)


class NatsInbound(NatsState):
    """Subscription half of `NatsBus` (a mixin: the state lives on the bus)."""

    async def subscribe(self, topic_filter: str, handler: Handler, *, qos: int = 0,
                        queue: str | None = None, durable: str | None = None,
                        order: OrderKey | None = None) -> Subscription:
        """Core subscription (qos is ignored: core NATS has no acknowledgements), or, with
        `durable`, a JetStream durable pull consumer. `queue` on a durable is ignored: every
        subscriber that binds the same durable name already shares its messages.

        Before the first connection is up the subscription is registered and set up as soon
        as it is; afterwards this returns once the server has it.
        """
        self._check_open()
        validate_filter(topic_filter)
        check_qos(qos)
        if durable is not None:
            if not self.jetstream:
                raise ConfigError(f"durable subscription {durable!r} needs jetstream=True")
            if not durable or any(c in durable for c in ". *>\t"):
                raise ConfigError(f"bad durable name {durable!r}")
            # NATS 'a.>' does not match 'a'; a durable consumer has one filter subject
            subjects = [to_nats_subject(topic_filter)]
            sub: NatsSubscription | JetStreamSubscription = JetStreamSubscription(
                self, topic_filter, handler, qos=qos, queue=queue, durable=durable,
                batch=self.fetch_batch, fetch_timeout=self.fetch_timeout)
        else:
            subjects = nats_subjects_for_filter(topic_filter)
            sub = NatsSubscription(self, topic_filter, handler, qos=qos, queue=queue)
            sub.start()
        sub.subjects = subjects
        self._subs.append(sub)
        if self._nc is not None:
            try:
                await self._establish(sub)
            except BaseException:
                await self._drop(sub)
                raise
        return sub

    async def _establish_pending(self) -> None:
        for sub in list(self._subs):
            if not isinstance(sub, (NatsSubscription, JetStreamSubscription)):
                raise TypeError(f"nats {self.url}: {sub!r} was not made by this bus")
            if sub.active and not sub.established:
                try:
                    await self._establish(sub)
                except Exception as exc:
                    self.stats.errors += 1
                    log.error("nats %s: cannot set up subscription %r: %s (retried on the "
                              "next reconnect)", self.url, sub.filter, exc)

    async def _establish(self, sub: Subscription) -> None:
        if isinstance(sub, JetStreamSubscription):
            await self._establish_durable(sub)
            return
        assert isinstance(sub, NatsSubscription)
        topic_filter = sub.filter

        async def enqueue(nmsg: NatsMsg) -> None:
            # never awaits: a message is always in nats-py's queue, ours, or the handler
            subject = nmsg.subject
            if _reserved(subject) or not sub.active:
                return
            try:
                topic = from_nats_subject(subject)
            except Exception:
                return
            if not matches(topic_filter, topic):
                return
            self.stats.received += 1
            if sub.queued() >= self.max_pending or not sub.offer(Message(topic, nmsg.data)):
                self.stats.dropped += 1

        try:
            for s in sub.subjects:
                sub._nats_subs.append(
                    await self._client().subscribe(s, queue=sub.queue or "", cb=enqueue))
        except nats.errors.Error as exc:
            for ns in sub._nats_subs:
                try:
                    await ns.unsubscribe()
                except Exception:
                    pass
            sub._nats_subs.clear()
            raise BrokerUnavailable(
                f"{self.url}: subscribe to {topic_filter!r} failed: {exc}") from None
        sub.established = True

    async def _drop(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)
        await sub.stop(drop_queued=True)
        if isinstance(sub, NatsSubscription):
            for ns in sub._nats_subs:
                try:
                    await ns.unsubscribe()
                except Exception:
                    pass
        # a JetStream subscription ended its pull requests in stop; the durable consumer stays

    async def _unsubscribe(self, sub: Subscription) -> None:
        await self._drop(sub)
