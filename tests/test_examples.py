"""The example modules do what examples/modules/README.md says, checked against Python."""

from __future__ import annotations

import hashlib
import hmac
import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iotwasm.container import WasmContainer
from iotwasm.engine import Capabilities
from iotwasm.errors import GuestError, InitError
from iotwasm.message import Message
from iotwasm.sensors import SENSOR_TYPES, decode_frame, encode_frame

from conftest import EXAMPLES


def container(runtime, name, **config):
    return WasmContainer(name, EXAMPLES / f"{name}.wasm", runtime=runtime,
                         capabilities=Capabilities.grant("config", config={k: str(v) for k, v in config.items()})).start()


def run(c, *payloads, topic="t"):
    return c.process([Message(topic, p if isinstance(p, bytes) else json.dumps(p).encode()) for p in payloads])


def test_range_filter(runtime):
    c = container(runtime, "range_filter", min=10, max=30)
    r = run(c, {"value": 9.99}, {"value": 10}, {"value": 21.5}, {"value": 30}, {"value": 30.01},
            {"other": 1}, {"value": "hot"}, b"[1,2]")
    assert [o.index for o in r.outputs] == [1, 2, 3]
    assert [o.payload for o in r.outputs] == [b'{"value": 10}', b'{"value": 21.5}', b'{"value": 30}']
    reasons = {d.index: str(d.error) for d in r.dead_letters}
    assert reasons == {5: 'range_filter:iot_process: field "value" missing',
                       6: 'range_filter:iot_process: field "value" is not a number',
                       7: "range_filter:iot_process: payload is not a JSON object"}
    with pytest.raises(InitError, match="iot_init returned 3"):
        container(runtime, "range_filter", min=5, max=1)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), min_size=1, max_size=50))
def test_range_filter_agrees_with_python(shared_filter, values):
    r = run(shared_filter, *({"value": v} for v in values))
    assert [o.index for o in r.outputs] == [i for i, v in enumerate(values) if -5.5 <= v <= 1000]


@pytest.fixture(scope="module")
def shared_filter(runtime):
    return container(runtime, "range_filter", min=-5.5, max=1000)


def test_unit_convert(runtime):
    c = container(runtime, "unit_convert", to="F")
    r = run(c, {"device": "d1", "sensor": "temperature", "value": 21.5, "unit": "C"},
            {"device": "d1", "sensor": "temperature", "value": 300, "unit": "K"},
            {"sensor": "temperature", "value": 100}, {"value": 1013, "unit": "hPa"})
    outs = [json.loads(o.payload) for o in r.outputs]
    assert outs[0] == {"device": "d1", "sensor": "temperature", "value": 70.7, "unit": "F"}
    assert outs[1]["value"] == pytest.approx(80.33, abs=1e-6)
    assert outs[2] == {"sensor": "temperature", "value": 212, "unit": "F"}
    assert str(r.dead_letters[0].error) == "unit_convert:iot_process: cannot convert hPa to F"


def test_moving_average_matches_python(runtime):
    c = container(runtime, "moving_average", window=4)
    rng = random.Random(3)
    readings = [(f"d{rng.randrange(5)}", round(rng.uniform(-50, 50), 3)) for _ in range(300)]
    r = run(c, *({"device": d, "value": v} for d, v in readings))
    hist: dict[str, list[float]] = {}
    for (dev, v), o in zip(readings, r.outputs):
        hist.setdefault(dev, []).append(v)
        window = hist[dev][-4:]
        got = json.loads(o.payload)
        assert got["device"] == dev and got["n"] == len(window)
        assert got["avg"] == pytest.approx(sum(window) / len(window), abs=1e-5)


def test_frame_decoder_matches_the_python_reference(runtime):
    c = container(runtime, "frame_decoder")
    rng = random.Random(5)
    frames = [encode_frame(rng.randrange(1, 9999), rng.randrange(65536), rng.choice(list(SENSOR_TYPES)),
                           rng.uniform(-300, 300), rng.randrange(101)) for _ in range(200)]
    r = c.process([Message("devices/x/frame", f) for f in frames])
    assert not r.dead_letters
    for f, o in zip(frames, r.outputs):
        want = decode_frame(f)
        assert json.loads(o.payload) == pytest.approx(want)
        assert o.topic == f"sensors/{want['device']}/{want['sensor']}"


def test_frame_decoder_many_outputs_per_input_and_bad_frames(runtime):
    c = container(runtime, "frame_decoder")
    a, b = encode_frame(1, 1, "temperature", 20, 90), encode_frame(2, 2, "humidity", 55.5, 80)
    bad_crc = a[:11] + bytes([a[11] ^ 1])
    r = c.process([Message("f", a + b), Message("f", bad_crc), Message("f", a[:5])])
    assert [o.index for o in r.outputs] == [0, 0]
    reasons = [str(d.error) for d in r.dead_letters]
    assert reasons[0].startswith("frame_decoder:iot_process: bad CRC")
    assert "frame is 5 bytes, expected 12" in reasons[1]
    assert all(isinstance(d.error, GuestError) for d in r.dead_letters)


@pytest.mark.parametrize("key", ["k", "x" * 64, "x" * 65, "schlüssel"])
def test_hmac_signer_matches_python(runtime, key):
    c = container(runtime, "hmac_signer", key=key)
    payloads = [b"{}", b'{"device":"d1","avg":81.2}', b'{"a":[1,2,{"b":"}"}]}']
    r = c.process([Message("t", p) for p in payloads] + [Message("t", b"not json")])
    assert [d.index for d in r.dead_letters] == [3]
    for p, o in zip(payloads, r.outputs):
        doc = json.loads(o.payload)
        want = hmac.new(key.encode(), p, hashlib.sha256).hexdigest()
        assert doc.pop("sig") == want
        assert doc == json.loads(p)


def test_passthrough_wat_example(runtime):
    c = WasmContainer("passthrough", EXAMPLES / "passthrough.wasm", runtime=runtime).start()
    r = run(c, b"x", b"y", topic="a/b")
    assert [(o.topic, o.payload) for o in r.outputs] == [("a/b", b"x"), ("a/b", b"y")]
