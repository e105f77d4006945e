"""The shared retry delay: exponential growth, cap, reset, and jitter within its bounds."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iotwasm.backoff import Backoff


def test_without_jitter_delays_double_up_to_the_cap_and_reset_after_success():
    b = Backoff(0.1, 1.0, jitter=0)
    assert [b.next() for _ in range(6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    b.reset()
    assert b.next() == pytest.approx(0.1)


@given(initial=st.floats(0.001, 10), span=st.floats(1, 1000), jitter=st.floats(0, 1),
       seed=st.integers(0, 2**32), n=st.integers(1, 200))
def test_every_delay_lies_between_the_jittered_floor_and_the_ceiling(initial, span, jitter, seed, n):
    b = Backoff(initial, initial * span, jitter=jitter, rng=random.Random(seed))
    for i in range(1, n + 1):
        d = b.next()
        top = b.ceiling(i)
        assert top * (1 - jitter) - 1e-9 <= d <= top + 1e-9
        assert d <= initial * span + 1e-9


def test_jitter_spreads_nodes_that_failed_together():
    delays = {round(Backoff(1.0, 60.0, rng=random.Random(seed)).next(), 6) for seed in range(50)}
    assert len(delays) > 40


@pytest.mark.parametrize("args", [(0, 1), (2, 1), (1, 2, 0.5), (-1, 5)])
def test_nonsense_settings_are_refused(args):
    initial, maximum, *rest = args
    with pytest.raises(ValueError):
        Backoff(initial, maximum, factor=rest[0] if rest else 2.0)
