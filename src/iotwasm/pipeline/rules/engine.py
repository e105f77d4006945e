"""The rules engine: all rules of a node over message batches, and their checkpoints.

Hot path, per batch: each message is decoded once (JSON) and shared by every rule whose topic
filter matches it (filters are indexed; the topic → filters answer is memoised). Each rule was
compiled to closures when it was added (rule.py), so evaluating it is a few Python calls per
message, no tree walking. WASM function calls of a rule are gathered over the whole batch and
made in one guest call.

Window state is checkpointed to SQLite (`RuleStateStore`) so a restart continues open windows.
Updating a rule keeps the state that still applies: same window and GROUP BY keep the open
windows, and each aggregate keeps its running value when the new rule has the same call.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from ...message import Message
from ...messaging.topics import matches
from ...sqlite import open_db
from ..templates import TopicPattern
from .compiler import TOPIC, TS
from .rule import CompiledRule, Emission, EventTime, RuleCounters, RuleSpec

__all__ = ["CompiledRule", "Emission", "EventTime", "RuleCounters", "RuleEngine", "RuleSpec", "RuleStateStore"]


class RuleStateStore:
    """Checkpoints of rules' window state in SQLite (WAL), keyed by rule name and shape."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._db = open_db(self.path, synchronous="NORMAL", what="rule checkpoints",
                           schema="CREATE TABLE IF NOT EXISTS rule_state (rule TEXT PRIMARY KEY, "
                                  "shape TEXT NOT NULL, state TEXT NOT NULL, saved REAL NOT NULL)")
        self._lock = threading.Lock()

    def save(self, items: list[tuple[str, str, dict]]) -> None:
        rows = [(name, shape, json.dumps(state, separators=(",", ":")), time.time())
                for name, shape, state in items]
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO rule_state VALUES (?,?,?,?)", rows)
            self._db.execute("COMMIT")

    def load(self, rule: str) -> tuple[str, dict] | None:
        with self._lock:
            row = self._db.execute("SELECT shape, state FROM rule_state WHERE rule = ?", (rule,)).fetchone()
        return (row[0], json.loads(row[1])) if row else None

    def delete(self, rule: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM rule_state WHERE rule = ?", (rule,))

    def close(self) -> None:
        with self._lock:
            self._db.close()


class RuleEngine:
    """All rules of a node over the messages they subscribe to. Not thread-safe: one caller."""

    def __init__(self, store: RuleStateStore | None = None):
        self.store = store
        self.rules: dict[str, CompiledRule] = {}
        self._by_filter: dict[str, list[CompiledRule]] = {}
        self._patterns: dict[str, TopicPattern] = {}
        self._topic_memo: dict[str, tuple[str, ...]] = {}
        self._batch_functions: list | None = None   # functions told where a batch starts and ends
        self.decode_errors = 0

    # -- management --------------------------------------------------------------------------
    def add(self, spec: RuleSpec) -> CompiledRule:
        """Create or update a rule (compiles first: a bad rule changes nothing)."""
        rule = CompiledRule(spec)
        old = self.rules.get(spec.name)
        if old is not None:
            if old.shape == rule.shape:
                rule.load_state(old.dump_state())
            rule.counters = old.counters
            rule.enabled = old.enabled
            self._unindex(old)
        elif self.store is not None:
            saved = self.store.load(spec.name)
            if saved is not None and saved[0] == rule.shape:
                rule.load_state(saved[1])
        self.rules[spec.name] = rule
        self._batch_functions = None
        self._by_filter.setdefault(rule.filter, []).append(rule)
        self._patterns[rule.filter] = rule.pattern if rule.pattern.names else \
            self._patterns.get(rule.filter, rule.pattern)
        self._topic_memo.clear()
        return rule

    def _unindex(self, rule: CompiledRule) -> None:
        lst = self._by_filter.get(rule.filter, [])
        if rule in lst:
            lst.remove(rule)
        if not lst:
            self._by_filter.pop(rule.filter, None)
            self._patterns.pop(rule.filter, None)
        self._topic_memo.clear()

    def remove(self, name: str) -> None:
        rule = self.rules.pop(name, None)
        self._batch_functions = None
        if rule is not None:
            self._unindex(rule)
        if self.store is not None:
            self.store.delete(name)
            self.store.delete(f"alert:{name}")

    def set_enabled(self, name: str, enabled: bool) -> None:
        self.rules[name].enabled = enabled

    # -- evaluation --------------------------------------------------------------------------
    def filters_for(self, topic: str) -> tuple[str, ...]:
        """The filters of enabled rules that match `topic`."""
        return tuple(f for f in self._filters_for(topic) if any(r.enabled for r in self._by_filter[f]))

    def _filters_for(self, topic: str) -> tuple[str, ...]:
        hit = self._topic_memo.get(topic)
        if hit is None:
            if len(self._topic_memo) > 50_000:
                self._topic_memo.clear()
            hit = self._topic_memo[topic] = tuple(f for f in self._by_filter if matches(f, topic))
        return hit

    def process(self, messages: Sequence[Message], only: str | None = None) -> list[Emission]:
        """Run every rule over the messages it subscribes to; returns what the rules emitted.

        `only`: the messages came from this filter's subscription; rules of other filters do
        not see them (a message matching two subscriptions arrives once from each)."""
        out: list[Emission] = []
        per_filter: dict[str, list[dict]] = {}
        loads = json.loads
        fixed = (only,) if only is not None and only in self._by_filter else None
        if only is not None and fixed is None:
            return out
        for m in messages:
            filters = fixed or self._filters_for(m.topic)
            if not filters:
                continue
            try:
                row = loads(m.payload)
            except ValueError:
                self.decode_errors += 1
                for f in filters:
                    for rule in self._by_filter[f]:
                        rule.counters.decode_errors += 1
                continue
            if not isinstance(row, dict):
                row = {"value": row}
            row[TOPIC] = m.topic
            row[TS] = int(m.timestamp_ms)
            for f in filters:
                lst = per_filter.get(f)
                if lst is None:
                    lst = per_filter[f] = []
                pat = self._patterns[f]
                lst.append({**row, **pat.capture(m.topic)} if pat.names else row)
        if not per_filter:
            return out
        fns = self._batch_functions
        if fns is None:   # WASM functions reuse a result for the same argument within the batch
            fns = self._batch_functions = list({id(f): f for r in self.rules.values()
                                                for f in r.spec.functions.values()
                                                if hasattr(f, "begin_batch")}.values())
        shared: dict = {}
        for fn in fns:
            fn.begin_batch(shared)
        try:
            for f, rows in per_filter.items():
                for rule in self._by_filter[f]:
                    rule.evaluate(rows, out)
        finally:
            for fn in fns:
                fn.end_batch()
        return out

    def needs_ticks(self) -> bool:
        """Whether `tick` can do anything: an enabled rule with windows (only those close by
        processing time). Safe to call from another thread than the engine's."""
        return any(r.windows is not None and r.enabled for r in list(self.rules.values()))

    def tick(self, now_ms: int | None = None) -> list[Emission]:
        now_ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
        out: list[Emission] = []
        for rule in self.rules.values():
            rule.tick(now_ms, out)
        return out

    def checkpoint(self) -> None:
        if self.store is None:
            return
        self.store.save([(r.name, r.shape, r.dump_state()) for r in self.rules.values() if r.window])

    def stats(self) -> dict[str, dict]:
        return {n: {**r.counters.as_dict(), "enabled": r.enabled, "open_windows": r.open_windows(),
                    "watermark": r.watermark} for n, r in self.rules.items()}
