"""Leadership through a lease: one key in a KV bucket whose entries age out.

A candidate becomes the holder by creating the key, which fails while someone holds it, and
stays the holder by renewing it with compare-and-set (`update(key, value, last=revision)`)
every third of the bucket's max age. It stops acting as the holder at once when a renewal
loses (someone else wrote the key), and by itself when it has not renewed for two thirds of
the max age (its link is down): the key cannot age out — so nobody else can create it —
before a full max age after the last renewal was sent, and the last third is a margin for work
already under way. A holder that dies stops renewing; its key ages out of the bucket and a
candidate, trying about once a second, takes over. A clean stop deletes the key
(compare-and-set on its revision), so a candidate takes over at its next try.

A write whose reply was lost (a timeout) may still have landed: the value carries a token only
this candidate knows, so finding its own token in the key means the lease is still its own.

Leadership saves the fleet competing writers; it is not what keeps the fleet's state
consistent: every write the controller makes is compare-and-set anyway.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from typing import Callable

import nats.js.errors
from nats.js.kv import KeyValue

from .store import LEADER, FleetStore

log = logging.getLogger("iotwasm.fleet.lease")


class Lease:
    def __init__(self, store: FleetStore, holder: str, *, key: str = "controller", ttl_s: float = 3.0,
                 retry_s: float = 1.0, on_change: Callable[[bool], None] | None = None):
        self.store, self.holder, self.key = store, holder, key
        #: the bucket's max age: the one asked for until the bucket is opened, then the real one
        self.ttl_s = ttl_s
        self.retry_s = retry_s
        self.on_change = on_change
        self.revision = 0                # of the key as last written by this holder; 0: not held
        self.since: float | None = None  # wall clock when this holder acquired the lease
        self.leader: dict | None = None  # the holder as last seen (this one or another)
        self._token = secrets.token_hex(8)
        self._until = 0.0                # monotonic: acts as holder until then
        self._kv: KeyValue | None = None
        self._told: bool | None = None   # the state last reported through the log and on_change
        self._why = ""                   # why the lease was lost, for the log
        #: told (start, until) whenever this holder's term changes: from `start` it acts as the
        #: holder, until `until` at the latest (both monotonic); a renewal moves `until` on, a
        #: drop or release ends the term at once. An exact record of when this candidate held
        #: the lease — `held` is derived from the same two instants — for whoever audits that
        #: two candidates never held it at once.
        self.on_term: Callable[[float, float], None] | None = None
        self._term_start = 0.0

    @property
    def held(self) -> bool:
        return self.revision > 0 and time.monotonic() < self._until

    @property
    def renew_s(self) -> float:
        return self.ttl_s / 3

    def _value(self) -> bytes:
        return json.dumps({"id": self.holder, "since": self.since, "token": self._token}).encode()

    async def _call(self, coro):
        return await asyncio.wait_for(coro, max(0.5, self.renew_s))

    async def open(self) -> None:
        self._kv, ttl = await self.store.lease_bucket(self.ttl_s)
        if abs(ttl - self.ttl_s) > 1e-3:
            log.info("lease %s/%s: the bucket's max age is %.1f s (not %.1f s); renewing within that",
                     LEADER, self.key, ttl, self.ttl_s)
        self.ttl_s = ttl

    @property
    def _bucket(self) -> KeyValue:
        if self._kv is None:
            raise RuntimeError("the lease was used before open() opened its bucket")
        return self._kv

    async def acquire(self) -> bool:
        """One try to become the holder; True when this candidate holds the lease."""
        sent = time.monotonic()
        self.since = time.time()
        try:
            rev = await self._call(self._bucket.create(self.key, self._value()))
        except nats.js.errors.KeyWrongLastSequenceError:
            return await self._recover()
        except nats.js.errors.KeyNotFoundError:
            # nats-py's create, refused because the key existed, reads it to tell a deleted key
            # from a held one; a key that aged out in between is neither and escapes as this
            self.leader = None
            self._drop("the lease aged out while it was being taken")   # the next try creates it
            return False
        self._hold(rev, sent)
        return True

    async def renew(self) -> bool:
        """Extend the lease; False (and not held any more) when someone else wrote the key."""
        sent = time.monotonic()
        try:
            rev = await self._call(self._bucket.update(self.key, self._value(), last=self.revision))
        except nats.js.errors.KeyWrongLastSequenceError:
            return await self._recover()
        self._hold(rev, sent)
        return True

    async def _recover(self) -> bool:
        """The key is not at the revision this candidate knows: read who holds it. Its own token
        means a write whose reply was lost landed: renew from that revision."""
        try:
            entry = await self._call(self._bucket.get(self.key))
        except nats.js.errors.KeyNotFoundError:
            self.leader = None
            self._drop("the lease aged out")          # or was released meanwhile: next try
            return False
        try:
            value = json.loads(entry.value)
        except ValueError:
            value = {"id": entry.value.decode(errors="replace")}
        if isinstance(value, dict) and value.get("token") == self._token:
            sent = time.monotonic()
            self.since = value.get("since", self.since)
            try:
                rev = await self._call(self._bucket.update(self.key, self._value(), last=entry.revision))
            except nats.js.errors.KeyWrongLastSequenceError:
                self._drop("the lease changed while renewing it")
                return False
            self._hold(rev, sent)
            return True
        value = value if isinstance(value, dict) else {"id": str(value)}
        self.leader = {"id": value.get("id"), "since": value.get("since")}
        self._drop(f"{self.leader['id']} holds the lease now")
        return False

    def _drop(self, why: str) -> None:
        if self.revision:
            self._why = why
            now = time.monotonic()
            if now < self._until:
                self._until = now
                if self.on_term is not None:
                    self.on_term(self._term_start, now)
        self.revision = 0

    def _hold(self, revision: int, sent: float) -> None:
        if not self.held:                # not acting as holder until now: a new term
            self._term_start = time.monotonic()
        self.revision = revision
        self._until = sent + 2 * self.renew_s
        self.leader = {"id": self.holder, "since": self.since}
        if self.on_term is not None:
            self.on_term(self._term_start, self._until)

    async def release(self) -> None:
        """Give the lease up (delete with compare-and-set), so a candidate takes over at once."""
        revision = self.revision
        self._drop("released")
        self._report()
        if not revision or self._kv is None:
            return
        try:
            try:
                await self._call(self._kv.delete(self.key, last=revision))
            except nats.js.errors.APIError:
                # a renewal cut short by the stop may have landed after all: delete that revision
                # if it still carries this holder's token
                entry = await self._call(self._bucket.get(self.key))
                if json.loads(entry.value).get("token") != self._token:
                    return
                await self._call(self._kv.delete(self.key, last=entry.revision))
        except Exception as e:   # someone else's already, or the link is down: it ages out
            log.debug("lease %s not released: %s", self.key, e or type(e).__name__)

    async def run(self) -> None:
        """Hold the lease whenever possible, until cancelled: renew it while held, otherwise
        try to acquire it every `retry_s`."""
        while True:
            ok = False
            try:
                if self._kv is None:
                    await self.open()
                ok = await (self.renew() if self.revision else self.acquire())
            except asyncio.CancelledError:
                raise
            except Exception as e:   # link down, timeout: what is held stays held until it runs out
                log.debug("lease %s: %s: %s", self.key, type(e).__name__, e)
            self._report()
            if self.held:
                delay = self.renew_s if ok else self.renew_s / 3
                await asyncio.sleep(min(delay, max(0.0, self._until - time.monotonic())))
            else:
                await asyncio.sleep(self.retry_s)

    def _report(self) -> None:
        held = self.held
        if held == self._told:
            return
        was, self._told = self._told, held
        if held:
            self._why = ""
            log.info("%s %s: leader (lease %s/%s, renewed every %.1f s)", self.key, self.holder, LEADER,
                     self.key, self.renew_s)
        elif was:
            why, self._why = self._why or f"lease not renewed within {2 * self.renew_s:.1f} s", ""
            (log.info if why == "released" else log.warning)("%s %s: standby (%s)", self.key, self.holder, why)
        else:
            other = (self.leader or {}).get("id")
            log.info("%s %s: standby (%s)", self.key, self.holder, f"{other} leads" if other else "no leader yet")
        if self.on_change is not None:
            self.on_change(held)
