"""A generic, per-series streaming anomaly detector.

:class:`SeriesAnomalyDetector` learns, online and per series, what values are
usual *for this series* and scores each new reading by how rare it is against
everything the series did before. It knows nothing about units or physiology:
the same class runs once per patient and signal in the worker and once per file
in the NAB benchmark (:mod:`tools.nab`).

How it scores
-------------
Three views of the series are tracked, each by an adaptive-range histogram
(:class:`DensityHistogram`, 32 bins that double their span when a value falls
outside it):

* the value itself,
* a short exponentially weighted mean of the value (time constant about eight
  samples, time-aware for irregular timestamps), which turns sustained level
  shifts and bursts of spikes into rare values of their own, and
* the *surprise*: an exponentially weighted mean (time constant about sixteen
  samples) of ``-log10 p`` of the value view, i.e. how surprising the recent
  values were on average. Spikes that are individually familiar (a series with
  an occasional spike has learned them) but now come more often, or a noise
  level that rises, make a rare *rate* of surprise even when no single value
  is rare.

A value is scored by a conformal *density* p-value: the share of the past mass
lying in bins no denser than the value's own bin, ``(mass + 1) / (n + 1)``. A
value in an empty part of the range, or beyond the range seen so far, gets
``1 / (n + 1)`` - the chance that an exchangeable sample is the most unusual of
``n + 1`` - and beyond the range it decays further with the distance (by ``e``
per quarter of the histogram's span). The smoothed view must be
``secondary_weight`` times rarer to count as much as the value itself; the two
are combined by their minimum ``p`` (the surprise view counts with the same
weight as the smoothed one).

Evidence, not single samples
----------------------------
A cut-off on the per-sample ``p`` sits on a knife's edge: across the NAB series
the alarms that matter and the ones that do not have per-sample p-values a
factor of two or three apart, so one fixed cut-off either misses the first or
raises the second, and +-20 % on it moved the NAB score by 14 points. So a
sample rarer than ``evidence_p`` adds ``log10(evidence_p / p)`` to an
accumulator (a CUSUM of the rarity) that forgets with ``evidence_memory``
samples, and the score is the accumulated evidence::

    E = max(0, (1 - 1 / evidence_memory) * E + log10(evidence_p / p))
    score = min(1, E)

One sample far beyond everything seen alarms at once; a run of moderately rare
samples (a level shift inside the usual range, a burst of noise) alarms once
their evidence adds up to ``threshold``; an isolated marginal sample does not.
Because a p-value can never be smaller than about ``1 / n``, a young series
cannot raise: the warm-up is built in (and ``warmup`` adds an explicit one).

Self-calibrated alarm rate
--------------------------
``p`` is calibrated for an exchangeable series; real series drift, and a
noisy one keeps producing "new" values. Each alarm therefore raises the bar
for the next ones: an alarm needs ``score >= threshold * (1 + budget_step * A)``
where ``A`` counts the series' earlier alarms, each forgotten with a time
constant of ``budget_memory`` samples. A series that alarms often learns to
alarm less; a quiet one keeps the full sensitivity. After an alarm the next
``refractory`` valid samples cannot alarm (one alarm per episode). Scores held
back by either rule are capped at half the threshold.

Missing values (``None``, NaN, +-inf) score 0 and leave the state untouched. The
smoothing is time-aware: its weight follows the gap to the previous reading in
units of the series' typical sampling interval (a running median), and after a
gap of more than ``max_gap`` typical intervals it restarts from the new value.
The surprise is smoothed per valid sample.

The learned state is created on the first valid value, holds three histograms
and a few scalars, pickles to about 1.5 KB and involves no randomness: the
same input always gives the same scores.

Every default was chosen on NAB's public half (31 series, 7 categories) as
the centre of a plateau: +-20 % on any one setting (``evidence_p`` as a
probability) moves the NAB standard score by less than 2 points there, and
leave-one-category-out cross-validation (``bench/bench_nab.py``) estimates what
the same choice gives on series not tuned on. ``evidence_p`` moved by a factor
of 2.8 either way still costs about 10 points: the rarity at which a sample
starts to count is the one setting to leave alone.
"""

from __future__ import annotations

import math
from array import array
from typing import Any

__all__ = ["DEFAULT_THRESHOLD", "DensityHistogram", "SeriesAnomalyDetector"]

#: Alarm threshold on :meth:`SeriesAnomalyDetector.score_and_learn` scores: accumulated
#: evidence ``log10(evidence_p / p)``, e.g. one sample with p below 1 / 400 or a few rare
#: samples in a row; fixed in code for every series.
DEFAULT_THRESHOLD = 0.4

_LN10 = math.log(10.0)


class DensityHistogram:
    """Adaptive-range histogram with optional forgetting and conformal density p-values.

    Bins are equal-width; when a value falls outside the span, neighbouring bins
    are merged pairwise and the span doubles towards the value, so the span
    always covers the data with at least half the bins in use.

    Parameters
    ----------
    n_bins : int
        Number of bins (even).
    memory : float or None
        Exponential forgetting with this many samples of memory; ``None`` keeps
        all history.
    tail_decay : float
        Beyond the span, the p-value decays by ``e`` every ``span / tail_decay``.

    Examples
    --------
    >>> import numpy as np
    >>> h = DensityHistogram()
    >>> for v in np.random.default_rng(0).normal(size=1000):
    ...     h.add(float(v))
    >>> round(h.log10_p(0.0), 1)   # the mode: not rare at all
    -0.1
    >>> round(h.log10_p(3.5), 1)   # a value in an empty bin: about 1 / (n + 1)
    -3.0
    >>> h.log10_p(50.0) < -5      # far beyond the range
    True
    """

    __slots__ = ("_counts", "_first", "_inc", "_origin", "_total", "_width", "memory", "n_bins", "tail_decay")

    def __init__(self, n_bins: int = 32, memory: float | None = None, tail_decay: float = 4.0) -> None:
        if n_bins < 2 or n_bins % 2:
            raise ValueError("n_bins must be an even number >= 2")
        self.n_bins = n_bins
        self.memory = memory
        self.tail_decay = tail_decay
        self._counts: array[float] | None = None
        self._first = 0.0  # until two distinct values arrive: the one value seen, ``_total`` times
        self._origin = 0.0
        self._width = 1.0
        self._total = 0.0
        self._inc = 1.0

    def __getstate__(self) -> tuple[Any, ...]:
        return (
            self.n_bins, self.memory, self.tail_decay, self._counts, self._first,
            self._origin, self._width, self._total, self._inc,
        )  # fmt: skip

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        (
            self.n_bins, self.memory, self.tail_decay, self._counts, self._first,
            self._origin, self._width, self._total, self._inc,
        ) = state  # fmt: skip

    @property
    def total(self) -> float:
        """Total (decayed) number of samples added, in units of the latest sample."""
        return self._total / self._inc

    def log10_p(self, x: float) -> float:
        """Base-10 log of the density p-value of ``x`` against the history (0 when empty)."""
        counts = self._counts
        inc = self._inc
        norm = self._total + inc
        if counts is None:  # a constant series so far: any other value is new
            return 0.0 if self._total == 0.0 or x == self._first else math.log10(inc / norm)
        k = math.floor((x - self._origin) / self._width)
        if 0 <= k < self.n_bins:
            ck = counts[k]
            mass = 0.0
            for v in counts:
                if v <= ck:
                    mass += v
            return math.log10((mass + inc) / norm)
        dist = (self._origin - x) / self._width if k < 0 else (x - self._origin) / self._width - self.n_bins
        return math.log10(inc / norm) - dist * self.tail_decay / self.n_bins / _LN10

    def add(self, x: float) -> None:
        """Learn one (finite) value."""
        counts = self._counts
        if counts is None:
            if self._total == 0.0 or x == self._first:
                self._first = x
                self._total += self._inc
                return
            # two distinct values: lay the bins over twice their spread
            lo, hi = min(x, self._first), max(x, self._first)
            half = self.n_bins // 2
            self._width = (hi - lo) / half
            self._origin = lo - (half // 2) * self._width
            counts = self._counts = array("d", bytes(8 * self.n_bins))
            counts[self._index(self._first)] = self._total
        k = self._index(x)  # may grow the span (a new array)
        counts = self._counts
        assert counts is not None
        if self.memory:
            self._inc /= 1.0 - 1.0 / self.memory
            if self._inc > 1e6:
                f = 1.0 / self._inc
                for j in range(self.n_bins):
                    counts[j] *= f
                self._total *= f
                self._inc = 1.0
        counts[k] += self._inc
        self._total += self._inc

    def _index(self, x: float) -> int:
        n_bins = self.n_bins
        half = n_bins // 2
        while True:
            k = math.floor((x - self._origin) / self._width)
            if 0 <= k < n_bins:
                return k
            old = self._counts
            assert old is not None
            merged = [old[2 * j] + old[2 * j + 1] for j in range(half)]
            if k >= n_bins:  # grow upwards
                self._counts = array("d", merged + [0.0] * half)
            else:  # grow downwards
                self._origin -= n_bins * self._width
                self._counts = array("d", [0.0] * half + merged)
            self._width *= 2.0


class SeriesAnomalyDetector:
    """Streaming anomaly detector for one univariate series (River style).

    The constructor only stores settings; the learned state is created on the
    first valid value. See the module docstring for the method.

    Parameters
    ----------
    threshold : float
        Alarm level of the score (used for the refractory period and the alarm
        budget; callers raise an alarm when ``score >= threshold``).
    refractory : int
        After an alarm, the next ``refractory`` valid samples are capped below
        the threshold. 0 disables.
    evidence_p : float
        A sample with a p-value below this adds ``log10(evidence_p / p)`` to the evidence.
    evidence_memory : float
        The evidence forgets with this many valid samples (> 1).
    budget_step : float
        Each earlier alarm raises the bar by this fraction of ``threshold``. 0 disables.
    budget_memory : float
        Valid samples over which an earlier alarm is forgotten (time constant).
    smoothing : float
        Weight of a new value in the smoothed view at the typical sampling
        interval (0.125: time constant about eight samples).
    surprise_smoothing : float
        Weight of a new sample's surprise (``-log10 p`` of its value) in the
        smoothed surprise (0.0625: time constant about sixteen valid samples).
    secondary_weight : float
        How much rarer the smoothed and surprise views must be to count like the value itself.
    n_bins : int
        Histogram bins per view.
    memory : float or None
        Forgetting of the histograms, in samples (``None``: remember everything).
    warmup : int
        Valid samples that score 0 at the start.
    max_gap : float
        A gap longer than this many typical intervals restarts the smoothing.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(42)
    >>> values = rng.uniform(60.0, 80.0, 1500)      # bounded noise, e.g. a calm heart rate
    >>> values[1200] = 130.0                       # one spike
    >>> det = SeriesAnomalyDetector()
    >>> scores = [det.score_and_learn(60.0 * i, float(v)) for i, v in enumerate(values)]
    >>> [i for i, s in enumerate(scores) if s >= DEFAULT_THRESHOLD]
    [1200]
    >>> det.score_and_learn(60.0 * 1500, float("nan"))   # missing values score 0
    0.0
    """

    def __init__(
        self,
        *,
        threshold: float = DEFAULT_THRESHOLD,
        refractory: int = 100,
        smoothing: float = 0.125,
        slow_smoothing: float = 0.0156,
        surprise_smoothing: float = 0.0625,
        secondary_weight: float = 10.0,
        n_bins: int = 32,
        memory: float | None = None,
        warmup: int = 100,
        max_gap: float = 10.0,
        evidence_p: float = 0.007,
        evidence_memory: float = 10.0,
        budget_step: float = 0.2,
        budget_memory: float = 10_000.0,
    ) -> None:
        if not all(0.0 < w <= 1.0 for w in (smoothing, slow_smoothing, surprise_smoothing)):
            raise ValueError("smoothing, slow_smoothing and surprise_smoothing must be in (0, 1]")
        if not 0.0 < evidence_p < 1.0:
            raise ValueError("evidence_p must be in (0, 1)")
        if evidence_memory <= 1.0 or budget_memory <= 1.0:
            raise ValueError("evidence_memory and budget_memory must be > 1 (samples)")
        self.threshold = threshold
        self.refractory = refractory
        self.smoothing = smoothing
        self.slow_smoothing = slow_smoothing
        self.surprise_smoothing = surprise_smoothing
        self.secondary_weight = secondary_weight
        self.n_bins = n_bins
        self.memory = memory
        self.warmup = warmup
        self.max_gap = max_gap
        self.evidence_p = evidence_p
        self.evidence_memory = evidence_memory
        self.budget_step = budget_step
        self.budget_memory = budget_memory
        self._state: _State | None = None

    # -- River-style API -------------------------------------------------------------------------

    def score_one(self, ts: float, value: float | None) -> float:
        """Score a reading without learning it (and without refractory bookkeeping).

        ``ts`` is in seconds (any epoch); ``value`` may be ``None`` or NaN.
        """
        st = self._state
        if st is None or not _finite(value):
            return 0.0
        assert value is not None
        if st.n < self.warmup:
            return 0.0
        return min(1.0, self._evidence(st, self._log10_p(st, self._views(st, ts, float(value)))))

    def learn_one(self, ts: float, value: float | None) -> None:
        """Learn a reading (missing values are ignored)."""
        if not _finite(value):
            return
        assert value is not None
        st = self._state
        if st is None:
            st = self._state = _State(self.n_bins, self.memory, float(value))
        x = float(value)
        views = self._views(st, ts, x)
        if st.n >= self.warmup:
            st.evidence = self._evidence(st, self._log10_p(st, views))
        self._learn(st, ts, x, views)

    def score_and_learn(self, ts: float, value: float | None) -> float:
        """Score a reading in [0, 1], then learn it; applies the refractory period.

        Returns 0 for a missing value (state untouched) and during the warm-up.
        """
        if not _finite(value):
            return 0.0
        assert value is not None
        x = float(value)
        st = self._state
        if st is None:
            st = self._state = _State(self.n_bins, self.memory, x)
        views = self._views(st, ts, x)
        score = 0.0
        if st.n >= self.warmup:
            st.evidence = self._evidence(st, self._log10_p(st, views))
            score = min(1.0, st.evidence)
        self._learn(st, ts, x, views)
        st.alarms *= 1.0 - 1.0 / self.budget_memory
        if st.quiet > 0:
            st.quiet -= 1
            return min(score, 0.5 * self.threshold)
        if score >= self.threshold:
            if score < self.threshold * (1.0 + self.budget_step * st.alarms):
                return min(score, 0.5 * self.threshold)
            st.quiet = self.refractory
            st.alarms += 1.0
        return score

    # -- internals --------------------------------------------------------------------------------

    def _views(self, st: _State, ts: float, x: float) -> _Views:
        """The views of a new sample (not stored): the value's log10 p, the two smoothed values, the surprise."""
        log10_p_value = st.value_hist.log10_p(x)
        surprise = st.surprise + self.surprise_smoothing * (-log10_p_value - st.surprise)
        if st.n == 0:
            return log10_p_value, x, x, surprise
        dt = ts - st.last_ts
        typical = st.dt
        if typical <= 0.0 or dt <= 0.0:
            steps = 1.0
        elif dt > self.max_gap * typical:
            return log10_p_value, x, x, surprise
        else:
            steps = dt / typical
        w = 1.0 - (1.0 - self.smoothing) ** steps
        w_slow = 1.0 - (1.0 - self.slow_smoothing) ** steps
        return log10_p_value, st.smooth + w * (x - st.smooth), st.slow + w_slow * (x - st.slow), surprise

    def _evidence(self, st: _State, log10_p: float) -> float:
        """The evidence after a sample with this p-value (not stored)."""
        keep = 1.0 - 1.0 / self.evidence_memory
        return max(0.0, keep * st.evidence + math.log10(self.evidence_p) - log10_p)

    def _log10_p(self, st: _State, views: _Views) -> float:
        """The combined p-value of a sample: the value view's, or a secondary view's made ``secondary_weight``
        times larger, whichever is smallest."""
        log10_p_value, sm, slow, surprise = views
        secondary = min(st.smooth_hist.log10_p(sm), st.slow_hist.log10_p(slow), st.surprise_hist.log10_p(surprise))
        return min(log10_p_value, secondary + math.log10(self.secondary_weight))

    def _learn(self, st: _State, ts: float, x: float, views: _Views) -> None:
        _, sm, slow, surprise = views
        if st.n > 0:
            dt = ts - st.last_ts
            if dt > 0.0:
                # running median of the sampling interval (multiplicative steps)
                if st.dt <= 0.0:
                    st.dt = dt
                elif dt > st.dt:
                    st.dt = min(dt, st.dt * 1.05)
                elif dt < st.dt:
                    st.dt = max(dt, st.dt / 1.05)
        st.value_hist.add(x)
        st.smooth_hist.add(sm)
        st.slow_hist.add(slow)
        st.surprise_hist.add(surprise)
        st.smooth = sm
        st.slow = slow
        st.surprise = surprise
        st.last_ts = ts
        st.n += 1


#: a new sample's views: log10 p of its value, smoothed value, slowly smoothed value, smoothed surprise
_Views = tuple[float, float, float, float]


class _State:
    """Everything a :class:`SeriesAnomalyDetector` learns about one series."""

    __slots__ = ("alarms", "dt", "evidence", "last_ts", "n", "quiet", "slow", "slow_hist", "smooth", "smooth_hist",
                 "surprise", "surprise_hist", "value_hist")

    def __init__(self, n_bins: int, memory: float | None, first: float) -> None:
        self.n = 0
        self.quiet = 0
        self.last_ts = 0.0
        self.dt = 0.0
        self.evidence = 0.0
        self.alarms = 0.0
        self.smooth = first
        self.slow = first
        self.surprise = 0.0
        self.value_hist = DensityHistogram(n_bins, memory)
        self.smooth_hist = DensityHistogram(n_bins, memory)
        self.slow_hist = DensityHistogram(n_bins, memory)
        self.surprise_hist = DensityHistogram(n_bins, memory)

    def __getstate__(self) -> tuple[Any, ...]:
        return (self.n, self.quiet, self.last_ts, self.dt, self.evidence, self.alarms, self.smooth,
                self.slow, self.surprise, self.value_hist, self.smooth_hist, self.slow_hist, self.surprise_hist)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        (self.n, self.quiet, self.last_ts, self.dt, self.evidence, self.alarms, self.smooth,
         self.slow, self.surprise, self.value_hist, self.smooth_hist, self.slow_hist, self.surprise_hist) = state


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)

