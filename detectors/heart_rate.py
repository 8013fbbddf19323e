"""Heart-rate rules: resting tachycardia, bradycardia, NEWS2 bands, abrupt change.

Conditioning: a running median over ``hr_median_window`` readings (rejects
brief motion-artefact spikes from wrist optical sensors) followed by a
first-order low-pass (``hr_smooth_tau_s``). Rules see the conditioned value.

Bradycardia (< ``hr_low_bpm``, 40) is judged against the patient's own recent
rate, the median of the conditioned rate over the last ``hr_low_robust_window_s``
(10 min, 30-s samples):

* **abrupt drop** — the recent rate is well above the threshold (at least
  ``hr_low_baseline_margin_bpm``, 6 bpm): 60 s of the conditioned rate below 40
  open an episode. Falling from 60 to 38 within a minute or two is a new rhythm
  (heart block, vasovagal, drug effect), not noise, and is alarmed at once.
  From a rate at least ``hr_low_abrupt_depth_bpm`` (12 bpm) above 40, 40 s
  (``hr_low_abrupt_sustain_s``) suffice: the running median and the low-pass
  shorten a brief dip's time below 40 by about 20 s (more for a step down from a
  high rate), so a 60-s rule missed falls that stay below 40 for just over a
  minute; wrist noise (±2-3 bpm) cannot carry a 52+ bpm patient below 40.
* **near the threshold** — the patient's own rate already sits within 6 bpm of 40
  (deep sleep in a fit or beta-blocked patient: 41-44 bpm is their normal night).
  A wrist PPG reading wanders ±2-3 bpm with strongly correlated noise (AR(1),
  about 30 s), so one minute below 40 is indistinguishable from their baseline.
  Here the evidence must grow as the depth shrinks: a 2-minute median at least
  ``hr_low_deep_bpm`` (3) below 40 (and below their own rate) held 60 s, or the
  10-minute median below 40 held ``hr_low_robust_sustain_s`` (5 min). Both are
  medians, so motion spikes cannot mask a low rate. A sleeping rate of 39 bpm
  in such a patient is reported within about 15 minutes, which suits a stable,
  sleeping patient; an abrupt fall is still reported within about 2 minutes.
* **clearing** — above ``hr_low_clear_bpm`` (45) for ``hr_clear_s``, *or* both
  medians at or above 40 + ``hr_low_median_clear_bpm`` (42) for ``hr_clear_s``.
  Without the second rule a patient sleeping at 41-43 bpm would keep one
  episode open all night, and a real drop later that night would raise no new
  alert.
* **falling further** — an episode opened on the 10-minute-median path (the
  patient sleeps just below 40) is closed and a new one opened, once, when the
  2-minute median falls a further 3 bpm below both 40 and the recent median for
  60 s: an open "sleeping at 39" alert must not hide a new drop to 33.

Priorities (IEC 60601-1-8): ``bradycardia`` (< 40 bpm sustained; NEWS2 3,
risk of syncope or arrest) is HIGH. ``tachycardia_at_rest`` is HIGH when the
sustained rate is at or above ``hr_rest_high_urgent_bpm`` (131, NEWS2 pulse
score 3, the NEWS2 "red" single-parameter trigger for an urgent response, e.g.
fast atrial fibrillation, sepsis) and MEDIUM between the configurable
threshold (120) and 130: reversible harm, prompt review. NEWS2-band findings
are LOW (score 2) or MEDIUM (score 3) and are suppressed while a more specific
tachycardia/bradycardia episode is open (fusion: one alert per concern).
``hr_abrupt_change`` is LOW.

The rules themselves are the table :data:`detectors.rule_table.HEART_RATE_RULES`;
this module conditions the readings and computes what the rules read (the
patient's recent medians, the 6-minute jump, rest) and keeps their episodes.

Order policy: duplicates (same timestamp and value as the newest reading) are
ignored; late readings (older than the newest) are counted and dropped — a
5-second signal loses nothing clinically relevant by skipping a late sample,
and feeding it would corrupt the causal filters.
"""

from __future__ import annotations

import math
from array import array
from typing import Any

from detectors.activity import ActivityTracker
from detectors.base import Finding, Priority
from detectors.conditioning import news2_pulse_score
from detectors.config import DetectorConfig
from detectors.episodes import (
    IDLE,
    EpisodeStarts,
    PicklesWithConfig,
    Sustained,
    episode_from_state,
    own_episode,
    shared_idle_list,
    shared_time,
    shared_time_if_known,
)
from detectors.rule_table import HEART_RATE_RULES
from detectors.rules import CompiledRules

__all__ = ["HeartRateDetector"]

_SAMPLE_MS = 30_000  # abrupt-change ring resolution
_RING = 13  # 6 minutes of 30-s samples
_LAG = 4  # the jump is judged 2 minutes after it ended (steps for those minutes have arrived)
_SHORT = 4  # 2 minutes of 30-s samples: the short bradycardia median
_JUMP_S = (_RING - 1 - _LAG) * _SAMPLE_MS / 1000  # the span a jump is measured over
_MINUTE_MS = 60_000  # the activity tracker's cache key: the reading's minute
#: the NEWS2 pulse score of each whole rate up to _BEATS - 1 (news2_pulse_score of a rate rounds it first)
_BEATS = 256
_NEWS2_BY_BEAT = tuple(news2_pulse_score(b) for b in range(_BEATS))
#: the episodes' positions (the table's order)
_BRADY, _TACHY, _NEWS2, _ABRUPT = (HEART_RATE_RULES.index(k) for k in (
    "bradycardia", "tachycardia_at_rest", "hr_news2_band", "hr_abrupt_change"))
#: the episodes of a detector none of whose episodes has started, shared by every such detector and never
#: written (the rule engine signals a start in it; the detector then makes its own list): most patients'
#: heart-rate episodes never start (no bradycardia, tachycardia, NEWS2 band or abrupt change yet)
_ALL_IDLE = shared_idle_list(len(HEART_RATE_RULES.rules))


#: time constants of the low-pass (ms): one float object per value, which every detector holding it shares
_TAU_MS: dict[float, float] = {}


def _shared_tau(tau_ms: float) -> float:
    if type(tau_ms) is not float or not tau_ms > 0 or len(_TAU_MS) >= 1024:
        return tau_ms  # kept as it is (a zero keeps its sign)
    return _TAU_MS.setdefault(tau_ms, tau_ms)


#: (time constant, step) -> (step, the low-pass coefficient for it, the time constant): the tuple every detector
#: stepping at that rate shares (a heart rate every 5 s is most patients), held in one slot
_COEF: dict[tuple[float, int], tuple[int, float, float]] = {}
#: time constant -> the low-pass's tuple before its first step (no step, no coefficient), shared the same way
_START: dict[float, tuple[int, float, float]] = {}


def _cached(tau_ms: float) -> bool:
    """Whether tuples holding ``tau_ms`` are shared (a positive float: a zero keeps its sign, an int its type)."""
    return type(tau_ms) is float and tau_ms > 0


def _coefficient(tau_ms: float, dt: int) -> tuple[int, float, float]:
    """``(dt, 1 - exp(-dt / tau_ms), tau_ms)`` (1 without a time constant), shared per value."""
    hit = _COEF.get((tau_ms, dt)) if _cached(tau_ms) else None
    if hit is None:
        hit = (dt, 1.0 - math.exp(-dt / tau_ms) if tau_ms > 0 else 1.0, tau_ms)
        if len(_COEF) < 4096 and _cached(tau_ms):
            _COEF[(tau_ms, dt)] = hit
    return hit


def _start(tau_ms: float) -> tuple[int, float, float]:
    """``(-1, 0.0, tau_ms)``: the low-pass's step, coefficient and time constant before a first step."""
    tau_ms = _shared_tau(tau_ms)
    hit = _START.get(tau_ms) if _cached(tau_ms) else None
    if hit is None:
        hit = (-1, 0.0, tau_ms)
        if len(_START) < 1024 and _cached(tau_ms):
            _START[tau_ms] = hit
    return hit


def _median(xs: array[float]) -> float:
    s = sorted(xs)
    n = len(s)
    h = n >> 1
    return s[h] if n & 1 else (s[h - 1] + s[h]) / 2


class HeartRateDetector(PicklesWithConfig):
    """Clinical heart-rate rules for one patient.

    Parameters
    ----------
    config
        Thresholds (``hr_*``, ``rest_*``).

    Examples
    --------
    Twelve minutes of 140 bpm at rest (steps = 0) after a calm start:

    >>> a = ActivityTracker()
    >>> hr = HeartRateDetector()
    >>> out = []
    >>> for s in range(0, 45 * 60, 5):
    ...     t = s * 1000
    ...     if s % 60 == 0:
    ...         a.update(t, 0.0)
    ...     bpm = 140.0 if 15 * 60 <= s < 27 * 60 else 70.0
    ...     out += hr.update(t, bpm, a)
    >>> [(f.kind, f.cleared, f.priority.value) for f in out]
    [('hr_abrupt_change', False, 'low'), ('tachycardia_at_rest', False, 'high'), \
('tachycardia_at_rest', True, 'high'), ('hr_abrupt_change', True, 'low')]
    """

    # A worker holds one of these per patient: slots, and the windows as arrays of doubles (8 bytes a
    # value instead of a 32-byte float object and its list slot). The stored form keeps lists. The
    # running median and the low-pass (detectors.conditioning's RunningMedian and LowPass, the same
    # arithmetic) are kept in slots of their own rather than as two objects: ~120 bytes less, and two
    # method calls less on every reading.
    __slots__ = (
        "_activity", "_coef", "_last_ts", "_last_value", "_median", "_median_window", "_recent_known",
        "_recent_median", "_ring", "_ring_next", "_rules_for", "_samples", "_short_median", "_y",
        "_y_ts", "config", "duplicates", "episodes", "late", "rest_ok",
    )

    def __init__(self, config: DetectorConfig | None = None) -> None:
        self.config = config or DetectorConfig()
        #: the running median's last readings (None until the first reading) and how many it keeps: an array
        #: of doubles at its exact size (a list held a 24-byte float object per reading besides its slot)
        self._median: array[float] | None = None
        self._median_window = 0
        #: the low-pass: output and time (-1: restarts on the next reading), and (the last step, the coefficient
        #: for it, the time constant in ms): one tuple, shared by every detector stepping alike
        self._y = math.nan
        self._y_ts = -1
        self._coef = _start(self.config.hr_smooth_tau_s * 1000)
        self._last_ts = -1
        self._last_value = float("nan")
        #: the abrupt-change ring, the last _RING samples: None while it is the tail of ``_samples`` (they take
        #: the same values and the bradycardia window is the longer one), an array of its own otherwise (a
        #: configuration whose window is shorter, or a stored state whose ring is not that tail)
        self._ring: array[float] | None = None
        self._ring_next = -1
        #: 30-s samples of the conditioned rate over ``hr_low_robust_window_s`` (bradycardia)
        self._samples = array("d")
        self._recent_median = float("nan")
        self._short_median = float("nan")
        #: one episode per rule of the table, in its order
        self.episodes: list[Sustained] = _ALL_IDLE
        self.late = 0
        self.duplicates = 0
        #: after each update: at rest and no acute episode (input for baseline models)
        self.rest_ok = False
        self._rules_for: tuple[DetectorConfig, CompiledRules] | None = None
        self._activity: ActivityTracker | None = None
        self._recent_known = False

    @property
    def rules(self) -> CompiledRules:
        """The heart-rate rule table compiled for this detector's config (made on first use)."""
        r = self._rules_for
        if r is None or r[0] is not self.config:
            r = self._rules_for = HEART_RATE_RULES.bound(self.config)
        return r[1]

    @property
    def last_ts(self) -> int:
        return self._last_ts

    @property
    def smoothed(self) -> float:
        """The conditioned heart rate after the newest reading."""
        return self._y

    def message_values(self) -> dict[str, Any]:
        """Values for the rule table's messages (its ``extras``), computed when a finding is written."""
        a = self._activity
        return {
            "steps_in_window": a.steps_in_window(self._last_ts) if a is not None else 0.0,
            "drop_below_recent": self._recent_median - self._short_median,
            "jump_window_s": _JUMP_S,
            "jump_window_min": _JUMP_S / 60,
            "rate_before": self._rate_before(),
        }

    def update(self, ts: int, bpm: float, activity: ActivityTracker) -> list[Finding]:
        """Process one reading (bpm) at ``ts``; ``activity`` answers "at rest?"."""
        cfg = self.config
        newest = self._last_ts
        if ts <= newest:
            if ts == newest and bpm == self._last_value:
                self.duplicates += 1
            else:
                self.late += 1
            return []
        buf = self._median
        if buf is None:
            buf = self._median = array("d")
            self._median_window = cfg.hr_median_window
        eps = self.episodes
        if newest >= 0 and ts - newest > cfg.hr_max_gap_s * 1000:
            del buf[:]
            self._y = math.nan
            self._y_ts = -1
            if self._ring is not None:
                del self._ring[:]
            del self._samples[:]
            self._recent_median = self._short_median = float("nan")
            self._recent_known = False
            self._ring_next = -1
            for episode in eps:
                episode.reset_timer()
        self._last_ts = ts
        self._last_value = bpm
        # the running median (RunningMedian.push); once full the buffer drops its oldest reading before
        # taking a new one, so it keeps its exact size (an array grown one value at a time keeps spare room:
        # while it fills it is copied at each reading, the first few after a start or a gap)
        window = self._median_window
        if len(buf) >= window:
            del buf[0]
            buf.append(bpm)
        else:
            buf.append(bpm)
            buf = self._median = buf[:]
        s = sorted(buf)
        n = len(s)
        h = n >> 1
        x = s[h] if n & 1 else (s[h - 1] + s[h]) / 2
        # the low-pass (LowPass.push)
        y = self._y
        if self._y_ts < 0 or y != y:
            y = float(x)
        else:
            dt = ts - self._y_ts
            coef = self._coef
            if dt != coef[0]:
                coef = self._coef = _coefficient(coef[2], dt)
            y += coef[1] * (x - y)
        self._y = rate = y
        self._y_ts = ts
        # the tracker's answer for this minute when it has one (ActivityTracker.at_rest's own cache, read
        # here: a method call less on nearly every reading)
        rest = activity._cache_val if ts // _MINUTE_MS == activity._cache_key else activity.at_rest(ts)
        out: list[Finding] = []
        sampled = ts >= self._ring_next
        jump = 0.0
        if sampled:
            nxt = (ts // _SAMPLE_MS + 1) * _SAMPLE_MS
            self._ring_next = shared_time_if_known(nxt) or shared_time(nxt)  # every patient's: one object
            # both windows drop their oldest value before taking a new one once full, and are copied to
            # their exact size when they first fill: an array growing one value at a time keeps spare room
            samples = self._samples
            limit = max(_SHORT, int(cfg.hr_low_robust_window_s * 1000) // _SAMPLE_MS)
            ring = self._ring
            if ring is None and limit < _RING:  # the samples no longer hold the whole ring: its own from now
                ring = self._ring = samples[-_RING:]
            if len(samples) >= limit:
                del samples[0]
                samples.append(rate)
            else:  # filling: copied at its exact size (once every 30 s, for the first 10 minutes)
                samples.append(rate)
                self._samples = samples[:]
            self._brady_stats()
            # abrupt change: the conditioned HR moved between 6 and 2 minutes ago (judged once the
            # steps of those minutes have arrived, so the start of a walk is not mistaken for it)
            if ring is None:
                samples = self._samples
                if len(samples) >= _RING:
                    jump = samples[-1 - _LAG] - samples[-_RING]
            else:
                if len(ring) >= _RING:
                    del ring[0]
                    ring.append(rate)
                else:
                    ring.append(rate)
                    ring = self._ring = ring[:]
                if len(ring) == _RING:
                    jump = ring[-1 - _LAG] - ring[0]
        if self._activity is not activity:
            self._activity = activity
        bound = self._rules_for
        step = (bound[1] if bound is not None and bound[0] is cfg else self.rules).step_values
        beat = round(rate)  # news2_pulse_score(rate), read from its table for the usual rates
        score = _NEWS2_BY_BEAT[beat] if 0 <= beat < _BEATS else news2_pulse_score(rate)
        try:
            step(ts, eps, out, self, rate, rest, score, self._recent_median, self._short_median, self._recent_known,
                 sampled, jump)
        except EpisodeStarts:  # the first episode starts: the detector's own list from now on, the same step
            eps = self.episodes = [IDLE] * len(eps)
            step(ts, eps, out, self, rate, rest, score, self._recent_median, self._short_median, self._recent_known,
                 sampled, jump)
        self.rest_ok = rest and eps[_TACHY].onset_ms < 0 and eps[_BRADY].onset_ms < 0
        return out

    def _rate_before(self) -> float:
        """The oldest rate of the abrupt-change ring (NaN when empty)."""
        ring = self._ring
        if ring is not None:
            return ring[0] if ring else float("nan")
        samples = self._samples
        return samples[max(len(samples) - _RING, 0)] if samples else float("nan")

    def _ring_values(self) -> list[float]:
        """The abrupt-change ring as the stored form holds it."""
        ring = self._ring
        return (self._samples[-_RING:] if ring is None else ring).tolist()

    def _brady_stats(self) -> None:
        samples = self._samples
        if samples:
            self._recent_median = _median(samples)
            self._short_median = _median(samples[-_SHORT:])
        else:
            self._recent_median = self._short_median = float("nan")
        self._recent_known = len(samples) >= 2 * _SHORT

    # -- pickling: builtins only (see PatientMonitor.__reduce__) ---------------------
    def dump_state(self) -> tuple[Any, ...]:
        """The state without the config, as builtins only (:meth:`load_state` is the inverse).

        Filters and episode machines go in as tuples: pickling each as an object costs ~1 µs.
        The layout is the one of the detectors before the rule table (states stored by them
        load): what the engine remembers per episode goes where those kept it.
        """
        buf = self._median
        eps = self.episodes
        brady, tachy, news2 = eps[_BRADY], eps[_TACHY], eps[_NEWS2]
        return (
            None if buf is None else (self._median_window, buf.tolist()), (self._coef[2], self._y, self._y_ts),
            self._last_ts, self._last_value,
            self._ring_values(), self._ring_next, tachy.dump_state(), brady.dump_state(),
            news2.dump_state(), eps[_ABRUPT].dump_state(),
            tachy.peak, _NEWS2_SCORE.get(news2.level, 0), _TACHY_SCORE.get(tachy.level, 0),
            self.late, self.duplicates, self._samples.tolist(), brady.armed, brady.armed_since,
        )

    def load_state(self, config: DetectorConfig, s: tuple[Any, ...]) -> None:
        """Set config and state from :meth:`dump_state` (also on an instance made by ``__new__``)."""
        self.config = config
        self._rules_for = None
        self._activity = None
        self._recent_known = False
        (median_filter, low_pass, self._last_ts, self._last_value, ring, self._ring_next, tachy, brady, news2,
         abrupt, peak, news2_score, tachy_score, self.late, self.duplicates, samples, armed, armed_since) = s
        self._samples = array("d", samples)
        # the ring is the samples' tail when it holds exactly that (every state this version stores; a
        # configuration whose bradycardia window is shorter than the ring makes it its own on the next sample)
        self._ring = None if ring == samples[-_RING:] else array("d", ring)
        if median_filter is None:
            self._median, self._median_window = None, 0
        else:
            self._median_window, buf = median_filter
            self._median = array("d", buf)
        tau_ms, self._y, self._y_ts = low_pass
        self._coef = _start(tau_ms)
        load = episode_from_state
        eps = self.episodes = [IDLE] * len(HEART_RATE_RULES.rules)
        eps[_BRADY], eps[_TACHY], eps[_NEWS2], eps[_ABRUPT] = load(brady), load(tachy), load(news2), load(abrupt)
        if not (type(peak) is float and peak == 0.0 and math.copysign(1.0, peak) > 0):
            own_episode(eps, _TACHY).peak = peak
        # the priority an open episode started with, stored as the NEWS2 pulse score it stands for
        if tachy_score:
            own_episode(eps, _TACHY).level = Priority.HIGH if tachy_score >= 3 else Priority.MEDIUM
        if news2_score:
            own_episode(eps, _NEWS2).level = Priority.MEDIUM if news2_score >= 3 else Priority.LOW
        if not (armed is False and type(armed_since) is int and armed_since == -1):
            brady_ep = own_episode(eps, _BRADY)
            brady_ep.armed, brady_ep.armed_since = armed, armed_since
        if all(ep is IDLE for ep in eps):
            self.episodes = _ALL_IDLE
        self.rest_ok = False
        self._brady_stats()


#: an episode's priority at onset as the NEWS2 pulse score kept in the pickled state (0: not opened yet)
_TACHY_SCORE = {Priority.HIGH: 3, Priority.MEDIUM: 2}
_NEWS2_SCORE = {Priority.MEDIUM: 3, Priority.LOW: 2}
