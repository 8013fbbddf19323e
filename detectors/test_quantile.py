"""The array P² sketch is river's ``Quantile``, bit for bit, and stores as river's does."""

from __future__ import annotations

import math
import pickle
import random
import struct
from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from river import stats

from detectors import quantile
from detectors.models import _quantile_from


def _bits(x: float | None) -> bytes | None:
    return None if x is None else struct.pack("<d", x)


def _river_state(q: stats.Quantile) -> tuple[float, bool, bytes]:
    return (q.q, q._is_updated, q._quantile.__getstate__())


def _same_after_every_update(qq: float, xs: list[float], o: int = 0) -> int:
    """Feed both (ours at offset ``o`` of a part's array, after other doubles); compare the estimate (as
    bits) and the stored form after every value. Returns the count."""
    before = array("d", [float(i) for i in range(o)])
    ours, theirs = before + quantile.new(qq), stats.Quantile(qq)
    assert _bits(quantile.value(ours, o)) == _bits(theirs.get()) and theirs.get() is None
    assert quantile.quantile_state(ours, o) == _river_state(theirs)
    for x in xs:
        quantile.update(ours, x, o)
        theirs.update(x)
        assert _bits(quantile.value(ours, o)) == _bits(theirs.get())
        assert quantile.quantile_state(ours, o) == _river_state(theirs)
    assert ours[:o] == before and len(ours) == o + quantile.SIZE  # the part's other doubles are untouched
    return len(xs)


@pytest.mark.parametrize("qq", [0.01, 0.25, 0.5, 0.9, 0.99])
def test_seeded_streams_match_river_after_every_update(qq: float) -> None:
    rng = random.Random(int(qq * 1000))
    n = 0
    for k in range(40):
        kind = k % 4
        size = rng.randint(1, 400)
        if kind == 0:  # continuous
            xs = [rng.gauss(0.0, 1.0) for _ in range(size)]
        elif kind == 1:  # heavy ties: a few distinct values
            xs = [float(rng.randint(0, 3)) for _ in range(size)]
        elif kind == 2:  # the models' scores: non-negative, with runs of one value and zeros
            xs = [abs(rng.gauss(0.0, 2.0)) if rng.random() < 0.7 else 0.0 for _ in range(size)]
        else:  # drifting, with signed zeros and repeats
            xs = [rng.choice((0.0, -0.0, 1.0, x)) for x in (rng.gauss(k, 3.0) for _ in range(size))]
        n += _same_after_every_update(qq, xs, o=k % 3 * 9)
    assert n > 4_000


def test_nan_after_the_first_five_matches_river() -> None:
    # the models' scores are never NaN, but a NaN must not make the sketch differ from river's
    xs = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, math.nan, 7.0, 2.5, math.nan, 8.0, 1.0]
    for qq in (0.5, 0.99):
        ours, theirs = quantile.new(qq), stats.Quantile(qq)
        for x in xs:
            quantile.update(ours, x)
            theirs.update(x)
            assert _bits(quantile.value(ours)) == _bits(theirs.get())
            assert quantile.quantile_state(ours) == _river_state(theirs)


@settings(max_examples=300, deadline=None)
@given(qq=st.floats(min_value=0.001, max_value=0.999),
       xs=st.lists(st.one_of(st.floats(allow_nan=False, allow_infinity=False, width=64, min_value=-1e6,
                                       max_value=1e6), st.sampled_from([0.0, -0.0, 1.0, 1.0, 2.0])),
                   max_size=120))
def test_any_stream_matches_river(qq: float, xs: list[float]) -> None:
    _same_after_every_update(qq, xs, o=7)


def test_a_stored_river_quantile_loads_and_goes_on_as_river() -> None:
    # a state river's object stored (every stage: empty, filling the first five, sorted) loads, stores
    # again as the same builtins, and both go on alike
    rng = random.Random(7)
    theirs = stats.Quantile(0.99)
    for size in (0, 1, 4, 1, 1, 50):
        for _ in range(size):
            theirs.update(abs(rng.gauss(0.0, 1.0)))
        s = _river_state(theirs)
        ours = _quantile_from(s)
        assert ours is not None and quantile.quantile_state(ours) == s
        assert pickle.dumps(quantile.quantile_state(ours)) == pickle.dumps(s)
        twin = stats.Quantile(0.99)
        twin._quantile.__setstate__(s[2])
        twin._is_updated = s[1]
        for _ in range(20):
            x = abs(rng.gauss(0.0, 1.0))
            quantile.update(ours, x)
            twin.update(x)
            assert _bits(quantile.value(ours)) == _bits(twin.get())
    assert quantile.quantile_state(None) is None and quantile.quantile_from(None) is None


def test_a_state_river_cannot_make_is_refused() -> None:
    s = quantile.quantile_state(quantile.new(0.5))
    assert s is not None
    raw = bytearray(s[2])
    raw[8:16] = struct.pack("<d", 0.3)  # a desired-position increment that does not follow from q
    with pytest.raises(ValueError):
        quantile.quantile_from((s[0], s[1], bytes(raw)))
    with pytest.raises(ValueError):
        quantile.new(1.0)
