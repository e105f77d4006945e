from __future__ import annotations

import pytest

from iotwasm.engine import (Capabilities, Limits, format_duration_ms, format_size, parse_count,
                            parse_duration_ms, parse_size, parse_timeout_ms)
from iotwasm.errors import ConfigError


@pytest.mark.parametrize("text,value", [("16Mi", 16 * 2**20), ("512Ki", 512 * 1024), ("1G", 10**9),
                                        ("64", 64), ("1.5Mi", 1572864), (" 2 GiB ", 2 * 2**30)])
def test_sizes(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text,value", [("10M", 10**7), ("500k", 500_000), ("1000", 1000)])
def test_counts(text, value):
    assert parse_count(text) == value


@pytest.mark.parametrize("text,value", [("50ms", 50), ("2s", 2000), ("250us", 0.25), ("7", 7),
                                        ("5m", 300_000), ("12h", 43_200_000), ("30d", 2_592_000_000)])
def test_durations(text, value):
    assert parse_duration_ms(text) == value


@pytest.mark.parametrize("bad", ["3w", "1y", "12 hours", "-1h", "h"])
def test_bad_duration_names_the_value(bad):
    with pytest.raises(ConfigError, match=f"cannot read duration {bad!r}"):
        parse_duration_ms(bad)


@pytest.mark.parametrize("bad", ["16Qi", "lots", "-5Mi", ""])
def test_bad_size_names_the_value(bad):
    with pytest.raises(ConfigError, match="cannot read size"):
        parse_size(bad)


@pytest.mark.parametrize("bad", ["0", 0, "0ms", "0.0s", "none", "None", "off", "unlimited", "inf", "-1", -5,
                                 "-1s", "never"])
def test_a_timeout_meaning_no_limit_is_refused(bad):
    with pytest.raises(ConfigError, match=r"^timeout .* is not a time limit; every call needs a positive one"):
        parse_timeout_ms(bad)
    with pytest.raises(ConfigError, match="is not a time limit"):
        Limits.parse(timeout=bad)


def test_timeouts_and_their_display():
    assert parse_timeout_ms("50ms") == 50 and parse_timeout_ms(250) == 250 and parse_timeout_ms("2s") == 2000
    assert [format_duration_ms(x) for x in (50, 999.5, 1000, 1500, 90_000)] == ["50ms", "999.5ms", "1s", "1.5s", "90s"]
    assert Limits(timeout_ms=None).describe().endswith("timeout the maximum, stack 512Ki, instances 64")


def test_limits_validation_and_description():
    lim = Limits.parse(memory="16Mi", fuel="10M", timeout="50ms", stack="256Ki")
    assert lim.describe() == "memory 16Mi, fuel 10,000,000, timeout 50ms, stack 256Ki, instances 64"
    with pytest.raises(ConfigError, match="below one wasm page"):
        Limits(memory=1000)
    with pytest.raises(ConfigError, match="stack"):
        Limits(stack=1024)
    assert format_size(3 * 2**20) == "3Mi" and format_size(1000) == "1000B"


def test_unknown_capability_is_refused():
    with pytest.raises(ConfigError, match="unknown capability 'network'"):
        Capabilities.grant("network")
    assert not Capabilities().allows("log")
