"""The Python and JavaScript examples behave exactly like their C versions on the same inputs:
the same outputs (index, topic, bytes) and the same dead letters with the same reasons.

Inputs are what devices send: JSON objects as json.dumps writes them (NaN and Infinity
included), with numbers of up to 15 significant digits, plus non-objects and text that is not
JSON. The range filter reads JSON with the language's own parser, so objects with repeated
keys, malformed text after the field, or a field name written with escapes (C compares keys
as written) are outside its promise; the unit converter walks members with the C SDK's rules
and is also fed malformed text.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iotwasm.container import RestartPolicy, WasmContainer
from iotwasm.engine import Capabilities, Limits
from iotwasm.message import Message

from components import LANGS, cached_runtime, example
from conftest import EXAMPLES

LIMITS = Limits.parse(memory="64Mi", timeout="2s")


@pytest.fixture(scope="module")
def rt():
    runtime = cached_runtime()
    yield runtime
    runtime.close()


def start(rt, name, path, config):
    return WasmContainer(name, rt.load(path, name=name, limits=LIMITS), runtime=rt, limits=LIMITS,
                         restart=RestartPolicy(mode="never"),
                         capabilities=Capabilities.grant("config", config=config)).start()


def outcome(c, payloads):
    r = c.process([Message("in/d1", p) for p in payloads])
    outs = [(o.index, o.topic, o.payload) for o in r.outputs]
    dead = sorted((d.index, str(d.error).split(": ", 1)[1]) for d in r.dead_letters)
    return outs, dead


@pytest.fixture(scope="module")
def twins(rt):
    """For each example and config: the C container and its Python and JavaScript twins."""
    made = {}

    def get(name, **config):
        key = (name, tuple(sorted(config.items())))
        if key not in made:
            cfg = {k: str(v) for k, v in config.items()}
            made[key] = [start(rt, "c", EXAMPLES / f"{name}.wasm", cfg)] + [
                start(rt, lang, example(lang, name), cfg) for lang in LANGS]
        return made[key]

    yield get
    for cs in made.values():
        for c in cs:
            c.stop()


def same(containers, payloads):
    c_out = outcome(containers[0], payloads)
    for twin in containers[1:]:
        assert outcome(twin, payloads) == c_out, twin.name
    return c_out


# numbers with at most 15 significant digits, the precision C's reader promises exactly
decimals = st.builds(lambda m, e: float(f"{m}e{e}"), st.integers(-10**15 + 1, 10**15 - 1),
                     st.integers(-20, 10))
numbers = st.one_of(st.integers(-10**15 + 1, 10**15 - 1), decimals,
                    st.sampled_from([0.0, -0.0, float("nan"), float("inf"), float("-inf")]))
keys = st.sampled_from(["value", "unit", "sensor", "device", "avg", "x", "é", "valu"])
scalars = st.one_of(numbers, st.booleans(), st.none(), st.text(max_size=8),
                    st.sampled_from(["C", "°F", "k", "hPa", "PSI", "bar", "kPa", "Pa", "mph",
                                     "temperature", "pressure"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=6)
objects = st.dictionaries(keys, values, max_size=6)


def dumps(obj, compact, ascii_only):
    seps = (",", ":") if compact else (", ", ": ")
    return json.dumps(obj, separators=seps, ensure_ascii=ascii_only).encode()


documents = st.builds(dumps, objects, st.booleans(), st.booleans())
not_objects = st.one_of(st.builds(lambda v: json.dumps(v).encode(), values.filter(
    lambda v: not isinstance(v, dict))), st.text(max_size=20).map(str.encode).filter(
    lambda b: not b.lstrip(b" \t\n\r").startswith(b"{")))
bound = st.one_of(st.none(), decimals.filter(lambda v: abs(v) < 1e300), st.integers(-100, 100))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(documents, not_objects), min_size=1, max_size=12),
       st.sampled_from(["value", "avg", "x"]), bound, bound)
def test_range_filter_twins_agree_with_c(twins, payloads, field, lo, hi):
    config = {"field": field}
    if lo is not None:
        config["min"] = repr(lo)
    if hi is not None:
        config["max"] = repr(hi)
    if lo is not None and hi is not None and lo > hi:
        config["min"], config["max"] = config["max"], config["min"]
    same(twins("range_filter", **config), payloads)


malformed = st.builds(lambda d, cut, junk: d[:cut] + junk, documents, st.integers(0, 40),
                      st.sampled_from([b"", b"}", b",", b'"', b"]", b' x', b'{"a":']))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(documents, not_objects, malformed), min_size=1, max_size=12),
       st.sampled_from(["F", "c", "K", "psi", "hPa", "bar", "°C"]))
def test_unit_convert_twins_agree_with_c(twins, payloads, to):
    same(twins("unit_convert", to=to), payloads)


def test_readings_the_examples_are_made_for(twins):
    outs, dead = same(twins("unit_convert", to="F"), [
        b'{"device":"d1","sensor":"temperature","value":21.5,"unit":"C"}',
        b'{"device": "d2", "sensor": "temperature", "value": 300}',
        b'{"sensor":"pressure","value":1013.25,"unit":"hPa"}', b"[1]"])
    assert outs == [(0, None, b'{"device":"d1","sensor":"temperature","value":70.7,"unit":"F"}'),
                    (1, None, b'{"device":"d2","sensor":"temperature","value":572,"unit":"F"}')]
    assert dead == [(2, "cannot convert hPa to F"), (3, "payload is not a JSON object")]
    outs, dead = same(twins("range_filter", min=10, max=30),
                      [b'{"value": 9.99}', b'{"value": 10}', b'{"value": "hot"}', b"nope"])
    assert [o[0] for o in outs] == [1]
    assert dead == [(2, 'field "value" is not a number'), (3, "payload is not a JSON object")]
