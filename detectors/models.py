"""Per-patient online models: what is unusual *for this patient*.

Two compact models, each a few hundred bytes pickled:

* :class:`RestingHeartRateModel` — a resting-heart-rate baseline per 4-hour
  time-of-day bin (sleep HR is not daytime HR), learned from at-rest minutes
  only (activity-aware: the heart-rate detector passes only readings with
  steps ≈ 0 and no acute episode). The *drift* is a slow EWMA (about half a day
  of resting minutes) of the deviation from the bin baseline. Resting HR
  creeping up over days is an early sign of infection.
* :class:`GlucoseVariabilityModel` — the ratio of the recent (≈1 day) to the
  long-term (≈1 week) standard deviation of glucose.

Why hand-rolled rather than River estimators per patient: a pickled
``MinMaxScaler | HalfSpaceTrees`` is ~170 KB, far beyond the 16 KB per
patient budget, and the baselines needed here are a handful of exponentially
weighted moments (equal to ``river.stats.EWMean``/``EWVar``, which the tests
check). River's ``river.stats.Quantile`` (the P² algorithm, O(1) memory) is
used for calibration, as :mod:`detectors.quantile`: the same estimator in one
array of doubles (144 bytes of state), bit for bit river's and stored as river's
object is. It tracks the distribution of each model's score, and the alert
cutoff is that quantile (``model_quantile``) or the clinical minimum effect,
whichever is larger — a quantile filter instead of a fixed cutoff. No model
finding is emitted during the warm-up
(``model_warmup_s`` of event time) and the long-term baseline is frozen while
an episode is pending or open, so a real drift is not learned away. When a
score opens and clears an episode is the rule table's
(:data:`detectors.rule_table.MODEL_RULES`).
"""

from __future__ import annotations

import math
from array import array
from typing import Any

from detectors import quantile
from detectors.base import Finding
from detectors.config import DetectorConfig
from detectors.episodes import IDLE, PicklesWithConfig, Sustained, episode_from_state, shared_time
from detectors.rule_table import DRIFT_RULES, VARIABILITY_RULES

__all__ = ["GlucoseVariabilityModel", "RestingHeartRateModel"]

_BINS = 6
_BIN_MS = 4 * 3_600_000
_DAY_MS = 86_400_000
_SLOW_N = 1500  # resting minutes per bin before the running mean turns into an EWMA
_DRIFT_N = 300  # EWMA span of the drift, in resting minutes
_MIN_BIN = 30  # resting minutes in a bin before its baseline is used
_UNFREEZE_MS = 3 * _DAY_MS
_INF = math.inf
# the resting-HR model's scalars, one array of doubles (integers are exact in a double up to 2**53: epoch
# milliseconds and counts are): then, once it has learned a minute, each bin's baseline and count
_H_FIRST, _H_DRIFT, _H_DRIFT_N, _H_CUTOFF = range(4)
_H_BASE = 4
_H_COUNT = _H_BASE + _BINS
_H_Q = _H_COUNT + _BINS
_NO_BINS = array("d", bytes(16 * _BINS))


#: the stored form of a model's quantile sketch (river's ``Quantile`` as builtins) and its inverse
_quantile_state = quantile.quantile_state
_quantile_from = quantile.quantile_from


class RestingHeartRateModel(PicklesWithConfig):
    """Resting-HR baseline per time-of-day bin and its drift.

    Parameters
    ----------
    config
        ``model_warmup_s``, ``hr_drift_min_bpm``, ``hr_drift_sustain_s``, ``model_quantile``.

    Examples
    --------
    Four days at a resting 60 bpm, then resting HR 12 bpm higher:

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> m = RestingHeartRateModel()
    >>> out = []
    >>> for minute in range(0, 7 * 1440, 2):
    ...     base = 60.0 + (12.0 if minute >= 4 * 1440 else 0.0)
    ...     for k in range(0, 60, 10):
    ...         out += m.observe(minute * 60_000 + k * 1000, base + rng.normal(0, 2))
    >>> [(f.kind, f.cleared, round((f.ts_ms / 60_000 - 4 * 1440) / 60)) for f in out]
    [('hr_resting_drift', False, 15)]
    >>> out[0].baseline, round(out[0].value)
    (60.0, 72)
    """

    # One per patient in a worker: what it learns (scalars, per-bin baselines and the quantile sketch of
    # detectors.quantile) in one array of doubles (a float attribute is a 24-byte object and a slot), the
    # episode the shared IDLE until it first starts. The current minute's sum stays in slots: it is
    # written on every at-rest reading.
    __slots__ = ("_minute", "_n", "_sum", "_v", "config", "episode")

    def __init__(self, config: DetectorConfig | None = None) -> None:
        self.config = config or DetectorConfig()
        self._minute = -1
        self._sum = 0.0
        self._n = 0
        #: first learned minute (ms), drift, drift count, last cutoff; from the first learned minute on,
        #: the bins' baselines and counts and the sketch
        self._v: array[float] = array("d", (-1.0, 0.0, 0.0, _INF))
        self.episode: Sustained = IDLE

    @property
    def sketch(self) -> tuple[float, bool, bytes] | None:
        """The quantile sketch of the drift's size in its stored form (None until the first learned minute)."""
        return _quantile_state(self._v, _H_Q) if len(self._v) > _H_Q else None

    @property
    def drift(self) -> float:
        """The slow EWMA of the at-rest deviation from the bin baseline (bpm)."""
        return self._v[_H_DRIFT]

    def observe(self, ts: int, hr: float) -> list[Finding]:
        """One at-rest (conditioned) heart-rate value; learns once per complete minute."""
        minute = ts // 60_000
        if minute == self._minute:
            self._sum += hr
            self._n += 1
            return []
        out: list[Finding] = []
        if self._n >= 3 and minute > self._minute:
            out = self._learn(self._minute * 60_000, self._sum / self._n)
        if minute > self._minute:
            self._minute = shared_time(minute)  # every patient's at this minute: one object
            self._sum = hr
            self._n = 1
        return out

    def _learn(self, ts: int, x: float) -> list[Finding]:
        cfg = self.config
        v = self._v
        if v[_H_FIRST] < 0:
            v[_H_FIRST] = ts
            v = self._v = v + _NO_BINS + quantile.new(cfg.model_quantile)  # a new array: no spare room
        b = (ts % _DAY_MS) // _BIN_MS
        c = v[_H_COUNT + b]
        ep = self.episode
        drift = v[_H_DRIFT]
        frozen = (ep.since >= 0 or ep.onset_ms >= 0 or abs(drift) > v[_H_CUTOFF] / 2) and not (
            ep.onset_ms >= 0 and ts - ep.onset_ms > _UNFREEZE_MS
        )
        base = v[_H_BASE + b]
        if c >= _MIN_BIN:
            d = x - base
            drift_n = v[_H_DRIFT_N] = v[_H_DRIFT_N] + 1.0
            drift = v[_H_DRIFT] = drift + (d - drift) / min(drift_n, _DRIFT_N)
        if not frozen or c < _MIN_BIN:
            v[_H_COUNT + b] = c + 1
            v[_H_BASE + b] = base + (x - base) / min(c + 1, _SLOW_N)
        if ts - v[_H_FIRST] < cfg.model_warmup_s * 1000 or c < _MIN_BIN:
            return []
        score = abs(drift)
        cutoff = max(cfg.hr_drift_min_bpm, quantile.value(v, _H_Q) or 0.0)
        v[_H_CUTOFF] = cutoff
        if not (ep.since >= 0 or ep.onset_ms >= 0):
            quantile.update(v, score, _H_Q)
        out: list[Finding] = []
        eps = [ep]
        DRIFT_RULES.compiled(cfg).step(ts, (x, drift, cutoff, base), eps, out, self)
        if eps[0] is not ep:  # the rule engine started the episode: the model's own now
            self.episode = eps[0]
        return out

    def message_values(self) -> dict[str, Any]:
        """Values for the rule table's messages (its ``extras``), computed when a finding is written."""
        return {"usual_all": sum(self._v[_H_BASE:_H_COUNT]) / _BINS}

    # -- pickling: builtins only (see PatientMonitor.__reduce__) ---------------------
    def dump_state(self) -> tuple[Any, ...]:
        """The state without the config, as builtins only (:meth:`load_state` is the inverse)."""
        v = self._v
        return (int(v[_H_FIRST]), self._minute, self._sum, self._n, v[_H_BASE:_H_COUNT].tolist(),
                [int(c) for c in v[_H_COUNT:_H_Q]], v[_H_DRIFT], int(v[_H_DRIFT_N]), v[_H_CUTOFF],
                self.sketch, self.episode.dump_state())

    def load_state(self, config: DetectorConfig, s: tuple[Any, ...]) -> None:
        """Set config and state from :meth:`dump_state` (also on an instance made by ``__new__``)."""
        self.config = config
        first_ts, self._minute, self._sum, self._n, base, count, drift, drift_n, cutoff, q, episode = s
        if len(base) != len(count) or len(base) not in (0, _BINS) or (q is None) != (not base):
            raise ValueError(f"resting-HR model state with {len(base)} baselines, {len(count)} counts and "
                             f"{'no' if q is None else 'a'} quantile sketch")
        v = array("d", (first_ts, drift, drift_n, cutoff, *base, *count))
        sketch = _quantile_from(q)
        self._v = v if sketch is None else v + sketch
        self.episode = episode_from_state(episode)


_FAST_N = 288  # ~1 day of 5-min readings
_SLOW_GN = 2016  # ~1 week
_G_FIRST, _G_N, _G_MEAN, _G_FAST_VAR, _G_SLOW_MEAN, _G_SLOW_VAR, _G_SLOW_N, _G_SCORE, _G_CUTOFF = range(9)
_G_Q = 9


class GlucoseVariabilityModel(PicklesWithConfig):
    """Recent vs long-term glucose variability (SD ratio), calibrated by a quantile filter.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(1)
    >>> m = GlucoseVariabilityModel()
    >>> out = []
    >>> for i in range(8 * 288):
    ...     sd = 20.0 if i < 4 * 288 else 50.0
    ...     out += m.observe(i * 300_000, 140.0 + rng.normal(0, sd))
    >>> [(f.kind, f.cleared) for f in out]
    [('glucose_variability_change', False)]
    """

    # one per patient in a worker: its scalars and quantile sketch in one array of doubles (see
    # RestingHeartRateModel)
    __slots__ = ("_v", "config", "episode")

    def __init__(self, config: DetectorConfig | None = None) -> None:
        self.config = config or DetectorConfig()
        #: first reading (ms), readings, recent mean and variance, usual mean and variance, usual count,
        #: last score and cutoff; from the first reading on, the sketch
        self._v: array[float] = array("d", (-1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, _INF))
        self.episode: Sustained = IDLE

    @property
    def sketch(self) -> tuple[float, bool, bytes] | None:
        """The quantile sketch of the score in its stored form (None until the first reading)."""
        return _quantile_state(self._v, _G_Q) if len(self._v) > _G_Q else None

    def observe(self, ts: int, g: float) -> list[Finding]:
        """One in-order glucose reading (mg/dL)."""
        cfg = self.config
        v = self._v
        if v[_G_FIRST] < 0:
            v[_G_FIRST] = ts
            v[_G_MEAN] = g
            v[_G_SLOW_MEAN] = g
            if len(v) == _G_Q:
                v = self._v = v + quantile.new(cfg.model_quantile)  # a new array: no spare room
        n = v[_G_N] = v[_G_N] + 1.0
        a = 1.0 / min(n, _FAST_N)
        mean = v[_G_MEAN]
        d = g - mean
        v[_G_MEAN] = mean + a * d
        fast_var = v[_G_FAST_VAR] = (1 - a) * (v[_G_FAST_VAR] + a * d * d)
        ep = self.episode
        frozen = ep.since >= 0 or ep.onset_ms >= 0
        learn = not frozen and v[_G_SCORE] <= v[_G_CUTOFF] / 2
        if learn or (ep.onset_ms >= 0 and ts - ep.onset_ms > _UNFREEZE_MS):
            slow_n = v[_G_SLOW_N] = v[_G_SLOW_N] + 1.0
            b = 1.0 / min(slow_n, _SLOW_GN)
            slow_mean = v[_G_SLOW_MEAN]
            d2 = g - slow_mean
            v[_G_SLOW_MEAN] = slow_mean + b * d2
            v[_G_SLOW_VAR] = (1 - b) * (v[_G_SLOW_VAR] + b * d2 * d2)
        slow_var = v[_G_SLOW_VAR]
        if ts - v[_G_FIRST] < cfg.model_warmup_s * 1000 or slow_var <= 0:
            return []
        ratio = math.sqrt(fast_var / slow_var) if fast_var > 0 else 0.0
        score = abs(math.log(ratio)) if ratio > 0 else 10.0
        cutoff = max(math.log(cfg.glucose_var_min_ratio), quantile.value(v, _G_Q) or 0.0)
        v[_G_SCORE] = score
        v[_G_CUTOFF] = cutoff
        if not frozen:
            quantile.update(v, score, _G_Q)
        out: list[Finding] = []
        eps = [ep]
        VARIABILITY_RULES.compiled(cfg).step(ts, (score, cutoff), eps, out, self)
        if eps[0] is not ep:  # the rule engine started the episode: the model's own now
            self.episode = eps[0]
        return out

    def message_values(self) -> dict[str, Any]:
        """Values for the rule table's messages (its ``extras``), computed when a finding is written."""
        v = self._v
        fast_var, slow_var = v[_G_FAST_VAR], v[_G_SLOW_VAR]
        ratio = math.sqrt(fast_var / slow_var) if fast_var > 0 else 0.0
        return {
            "sd_recent": math.sqrt(fast_var), "sd_usual": math.sqrt(slow_var), "ratio": ratio,
            "direction": "higher" if ratio > 1 else "lower", "recent_window_s": _FAST_N * 300.0,
        }

    # -- pickling: builtins only (see PatientMonitor.__reduce__) ---------------------
    def dump_state(self) -> tuple[Any, ...]:
        """The state without the config, as builtins only (:meth:`load_state` is the inverse)."""
        v = self._v
        return (int(v[_G_FIRST]), int(v[_G_N]), v[_G_MEAN], v[_G_FAST_VAR], v[_G_SLOW_MEAN], v[_G_SLOW_VAR],
                int(v[_G_SLOW_N]), v[_G_SCORE], v[_G_CUTOFF], self.sketch, self.episode.dump_state())

    def load_state(self, config: DetectorConfig, s: tuple[Any, ...]) -> None:
        """Set config and state from :meth:`dump_state` (also on an instance made by ``__new__``)."""
        self.config = config
        first_ts, n, mean, fast_var, slow_mean, slow_var, slow_n, score, cutoff, q, episode = s
        v = array("d", (first_ts, n, mean, fast_var, slow_mean, slow_var, slow_n, score, cutoff))
        sketch = _quantile_from(q)
        self._v = v if sketch is None else v + sketch
        self.episode = episode_from_state(episode)
