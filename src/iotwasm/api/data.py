"""The API's views of what went through the node: recent dead letters (browsed, and replayed
into their route by an operator) and the latest rows the routes' and rules' store sinks wrote.

Dead letters are read through the node state's accessor, route by route, so a tenant sees
only those of its own routes (and after identities replace names, those of the live route of
that name). A payload is previewed, never interpreted: UTF-8 text as text, anything else as
hex, both cut at `PREVIEW` bytes; the page shows it as text.

Replay: the chosen dead letters of one route go back into that route where they failed — at
the step that refused them, or straight to the sinks when a sink failed — with the topic they
had there. Each is marked replayed (when and by whom) once the route is through with it
(delivered, filtered out, or dead-lettered again: a new dead letter then, replayable on its
own), so it is not replayed twice; while it is in the route a second request skips it. A node
stopping meanwhile leaves it unmarked: replaying it again is possible (at-least-once). A sink's
dead letter goes to every sink of the route again: sinks that had taken it get it twice.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, Field

from ..messaging.topics import matches
from ..pipeline.templates import TopicPattern
from ..sqlite import MAX_INTEGER, open_db

#: payload bytes shown in a preview
PREVIEW = 1024
#: how long a replay request waits for its messages to be through before it answers
REPLAY_WAIT_S = 5.0
#: a replay waits this long for room in a full route queue
QUEUE_WAIT_S = 5.0

_ORIGIN = re.compile(r"([^\s:]+):([A-Za-z_][\w.$-]*): (.*)", re.DOTALL)


class ReplayBody(BaseModel):
    ids: list[Annotated[int, Field(ge=1, le=MAX_INTEGER)]] = Field(
        min_length=1, max_length=100, description="dead letter ids of this route")


def preview(payload: bytes) -> dict:
    """How a payload is shown: `text` when it is UTF-8 without control characters other than
    tab and newlines, else `hex` (space-separated bytes); `truncated` past `PREVIEW` bytes."""
    head = payload[:PREVIEW]
    out: dict[str, Any] = {"size": len(payload), "truncated": len(payload) > PREVIEW}
    text: str | None
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:
        # a multi-byte character cut at the preview's end is still text
        text = head[:e.start].decode("utf-8") if out["truncated"] and e.start >= len(head) - 3 else None
    if text is not None and not any(ord(c) < 32 and c not in "\t\n\r" or ord(c) == 127 for c in text):
        out["text"] = text
    else:
        out["hex"] = head.hex(" ")
    return out


def origin(step: str, error: str) -> tuple[str | None, str]:
    """(function, reason) of a dead letter's error: errors of a module start with
    ``module:function: `` (the module being the step), which the browser shows apart."""
    m = _ORIGIN.fullmatch(error)
    if m and m.group(1) == step:
        return m.group(2), m.group(3)
    if error.startswith(f"{step}: "):
        return None, error[len(step) + 2:]
    return None, error


class ReplayLog:
    """Which dead letters were replayed, when and by whom (in the API's database: the node
    state's dead letters are not changed). Dead letter ids are never reused."""

    SCHEMA = ("CREATE TABLE IF NOT EXISTS dead_letter_replays (id INTEGER PRIMARY KEY, ts REAL NOT NULL, "
              "actor TEXT NOT NULL, route TEXT NOT NULL)")

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()

    def _run(self, fn: Callable) -> Any:
        with self._lock:
            db = open_db(self.path, synchronous="FULL", schema=self.SCHEMA, what="dead-letter replays")
            try:
                return fn(db)
            finally:
                db.close()

    def marks(self, ids: list[int]) -> dict[int, dict]:
        if not ids:
            return {}
        rows = self._run(lambda db: db.execute(
            f"SELECT id, ts, actor FROM dead_letter_replays WHERE id IN ({','.join('?' * len(ids))})",
            ids).fetchall())
        return {r[0]: {"ts": r[1], "by": r[2]} for r in rows}

    def mark(self, ids: list[int], actor: str, route: str) -> None:
        now = time.time()

        def write(db) -> None:
            with db:
                db.executemany("INSERT OR IGNORE INTO dead_letter_replays VALUES (?,?,?,?)",
                               [(i, now, actor, route) for i in ids])
        if ids:
            self._run(write)


def entry_point(rec, step: str) -> int | None:
    """The step index a dead letter at `step` re-enters its route at: the step of that
    deployment, after the last step for a sink, the first for a failure of the route itself."""
    steps = list(rec.manifest.spec.steps)
    if step in steps:
        return steps.index(step)
    if step in [s.name for s in rec.sinks]:
        return len(steps)
    if step == "route":
        return 0
    return None


def source_variables(rec, topic: str) -> dict[str, str]:
    """The topic variables the route's source would have captured from `topic` (its ordering
    key and sink templates use them); none for a topic the source pattern does not match."""
    src = rec.manifest.spec.source
    text = {"mqtt": lambda: src.mqtt.topic, "bus": lambda: src.bus.topic, "http": lambda: src.http.topic,
            "sensors": lambda: "devices/{device}/frame"}.get(src.type, lambda: None)()
    if src.type == "nats":
        text = getattr(getattr(rec.source, "pattern", None), "text", None)
    if not text:
        return {}
    pattern = TopicPattern.parse(text)
    return pattern.capture(topic) if matches(pattern.filter, topic) else {}
