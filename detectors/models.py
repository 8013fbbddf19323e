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
check). River *is* used for calibration: ``river.stats.Quantile`` (the P²
algorithm, O(1) memory, ~300 bytes) tracks the distribution of each model's
score, and the alert cutoff is that quantile (``model_quantile``) or the
clinical minimum effect, whichever is larger — a quantile filter instead of a
fixed cutoff. No model finding is emitted during the warm-up
(``model_warmup_s`` of event time) and the long-term baseline is frozen while
an episode is pending or open, so a real drift is not learned away. When a
score opens and clears an episode is the rule table's
(:data:`detectors.rule_table.MODEL_RULES`).
"""

from __future__ import annotations

import math
from array import array
from typing import Any

from river import stats

from detectors.base import Finding
from detectors.config import DetectorConfig
from detectors.episodes import PicklesWithConfig, Sustained
from detectors.rule_table import DRIFT_RULES, VARIABILITY_RULES

__all__ = ["GlucoseVariabilityModel", "RestingHeartRateModel"]

_BINS = 6
_BIN_MS = 4 * 3_600_000
_DAY_MS = 86_400_000
_SLOW_N = 1500  # resting minutes per bin before the running mean turns into an EWMA
_DRIFT_N = 300  # EWMA span of the drift, in resting minutes
_MIN_BIN = 30  # resting minutes in a bin before its baseline is used
_UNFREEZE_MS = 3 * _DAY_MS
#: the baselines of a model that has learned nothing yet (shared; replaced, never changed, on the first minute)
_EMPTY_D: array[float] = array("d")
_EMPTY_Q: array[int] = array("q")


def _quantile_state(q: stats.Quantile | None) -> tuple[float, bool, bytes] | None:
    """A river ``Quantile`` as builtins: ``(q, updated, the estimator's own pickled bytes)``.

    Pickled as an object it is two (the Python wrapper and its Rust estimator), ~3 µs of
    the patient state's pickling; this is all of its state (river 0.26, pinned; the round
    trip is tested in ``detectors/test_contract.py``).
    """
    if q is None:
        return None
    return (q.q, q._is_updated, q._quantile.__getstate__())


def _quantile_from(s: tuple[float, bool, bytes] | None) -> stats.Quantile | None:
    """Inverse of :func:`_quantile_state`."""
    if s is None:
        return None
    quantile, updated, estimator = s
    q = stats.Quantile(quantile)
    q._quantile.__setstate__(estimator)
    q._is_updated = updated
    return q


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

    # one per patient in a worker: slots, and the per-bin baselines as arrays
    __slots__ = (
        "_base", "_count", "_cutoff", "_drift_n", "_first_ts", "_minute", "_n", "_q", "_sum", "config", "drift",
        "episode",
    )

    def __init__(self, config: DetectorConfig | None = None) -> None:
        self.config = config or DetectorConfig()
        self._first_ts = -1
        self._minute = -1
        self._sum = 0.0
        self._n = 0
        self._base: array[float] = _EMPTY_D
        self._count: array[int] = _EMPTY_Q
        self.drift = 0.0
        self._drift_n = 0
        self._cutoff = math.inf
        self._q: stats.Quantile | None = None
        self.episode = Sustained()

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
            self._minute = minute
            self._sum = hr
            self._n = 1
        return out

    def _learn(self, ts: int, x: float) -> list[Finding]:
        cfg = self.config
        if self._first_ts < 0:
            self._first_ts = ts
            self._base = array("d", bytes(8 * _BINS))
            self._count = array("q", bytes(8 * _BINS))
            self._q = stats.Quantile(cfg.model_quantile)
        b = (ts % _DAY_MS) // _BIN_MS
        c = self._count[b]
        ep = self.episode
        frozen = (ep.since >= 0 or ep.onset_ms >= 0 or abs(self.drift) > self._cutoff / 2) and not (
            ep.onset_ms >= 0 and ts - ep.onset_ms > _UNFREEZE_MS
        )
        base = self._base[b]
        if c >= _MIN_BIN:
            d = x - base
            self._drift_n += 1
            self.drift += (d - self.drift) / min(self._drift_n, _DRIFT_N)
        if not frozen or c < _MIN_BIN:
            self._count[b] = c + 1
            self._base[b] = base + (x - base) / min(c + 1, _SLOW_N)
        if ts - self._first_ts < cfg.model_warmup_s * 1000 or c < _MIN_BIN:
            return []
        q = self._q
        assert q is not None
        score = abs(self.drift)
        cutoff = max(cfg.hr_drift_min_bpm, q.get() or 0.0)
        self._cutoff = cutoff
        if not (ep.since >= 0 or ep.onset_ms >= 0):
            q.update(score)
        out: list[Finding] = []
        DRIFT_RULES.compiled(cfg).step(ts, (x, self.drift, cutoff, base), [ep], out, self)
        return out

    def message_values(self) -> dict[str, Any]:
        """Values for the rule table's messages (its ``extras``), computed when a finding is written."""
        return {"usual_all": sum(self._base) / _BINS}

    # -- pickling: builtins only (see PatientMonitor.__reduce__) ---------------------
    def dump_state(self) -> tuple[Any, ...]:
        """The state without the config, as builtins only (:meth:`load_state` is the inverse)."""
        return (self._first_ts, self._minute, self._sum, self._n, self._base.tolist(), self._count.tolist(),
                self.drift, self._drift_n, self._cutoff, _quantile_state(self._q), self.episode.dump_state())

    def load_state(self, config: DetectorConfig, s: tuple[Any, ...]) -> None:
        """Set config and state from :meth:`dump_state` (also on an instance made by ``__new__``)."""
        self.config = config
        (self._first_ts, self._minute, self._sum, self._n, base, count, self.drift,
         self._drift_n, self._cutoff, q, episode) = s
        self._base = array("d", base) if base else _EMPTY_D
        self._count = array("q", count) if count else _EMPTY_Q
        self._q = _quantile_from(q)
        self.episode = Sustained.from_state(episode)



_FAST_N = 288  # ~1 day of 5-min readings
_SLOW_GN = 2016  # ~1 week


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

    __slots__ = (
        "_cutoff", "_fast_var", "_first_ts", "_mean", "_n", "_q", "_score", "_slow_mean", "_slow_n", "_slow_var",
        "config", "episode",
    )

    def __init__(self, config: DetectorConfig | None = None) -> None:
        self.config = config or DetectorConfig()
        self._first_ts = -1
        self._n = 0
        self._mean = 0.0
        self._fast_var = 0.0
        self._slow_mean = 0.0
        self._slow_var = 0.0
        self._slow_n = 0
        self._score = 0.0
        self._cutoff = math.inf
        self._q: stats.Quantile | None = None
        self.episode = Sustained()

    def observe(self, ts: int, g: float) -> list[Finding]:
        """One in-order glucose reading (mg/dL)."""
        cfg = self.config
        if self._first_ts < 0:
            self._first_ts = ts
            self._mean = g
            self._slow_mean = g
            self._q = stats.Quantile(cfg.model_quantile)
        self._n += 1
        a = 1.0 / min(self._n, _FAST_N)
        d = g - self._mean
        self._mean += a * d
        self._fast_var = (1 - a) * (self._fast_var + a * d * d)
        ep = self.episode
        frozen = ep.since >= 0 or ep.onset_ms >= 0
        learn = not frozen and self._score <= self._cutoff / 2
        if learn or (ep.onset_ms >= 0 and ts - ep.onset_ms > _UNFREEZE_MS):
            self._slow_n += 1
            b = 1.0 / min(self._slow_n, _SLOW_GN)
            d2 = g - self._slow_mean
            self._slow_mean += b * d2
            self._slow_var = (1 - b) * (self._slow_var + b * d2 * d2)
        if ts - self._first_ts < cfg.model_warmup_s * 1000 or self._slow_var <= 0:
            return []
        ratio = math.sqrt(self._fast_var / self._slow_var) if self._fast_var > 0 else 0.0
        score = abs(math.log(ratio)) if ratio > 0 else 10.0
        q = self._q
        assert q is not None
        cutoff = max(math.log(cfg.glucose_var_min_ratio), q.get() or 0.0)
        self._score = score
        self._cutoff = cutoff
        if not frozen:
            q.update(score)
        out: list[Finding] = []
        VARIABILITY_RULES.compiled(cfg).step(ts, (score, cutoff), [ep], out, self)
        return out

    def message_values(self) -> dict[str, Any]:
        """Values for the rule table's messages (its ``extras``), computed when a finding is written."""
        ratio = math.sqrt(self._fast_var / self._slow_var) if self._fast_var > 0 else 0.0
        return {
            "sd_recent": math.sqrt(self._fast_var), "sd_usual": math.sqrt(self._slow_var), "ratio": ratio,
            "direction": "higher" if ratio > 1 else "lower", "recent_window_s": _FAST_N * 300.0,
        }

    # -- pickling: builtins only (see PatientMonitor.__reduce__) ---------------------
    def dump_state(self) -> tuple[Any, ...]:
        """The state without the config, as builtins only (:meth:`load_state` is the inverse)."""
        return (self._first_ts, self._n, self._mean, self._fast_var, self._slow_mean, self._slow_var,
                self._slow_n, self._score, self._cutoff, _quantile_state(self._q), self.episode.dump_state())

    def load_state(self, config: DetectorConfig, s: tuple[Any, ...]) -> None:
        """Set config and state from :meth:`dump_state` (also on an instance made by ``__new__``)."""
        self.config = config
        (self._first_ts, self._n, self._mean, self._fast_var, self._slow_mean, self._slow_var,
         self._slow_n, self._score, self._cutoff, q, episode) = s
        self._q = _quantile_from(q)
        self.episode = Sustained.from_state(episode)

