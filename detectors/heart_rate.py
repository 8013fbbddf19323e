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

Order policy: duplicates (same timestamp and value as the newest reading) are
ignored; late readings (older than the newest) are counted and dropped — a
5-second signal loses nothing clinically relevant by skipping a late sample,
and feeding it would corrupt the causal filters.
"""

from __future__ import annotations

from typing import Any

from detectors.activity import ActivityTracker
from detectors.base import Finding, Priority, rule_finding
from detectors.conditioning import LowPass, RunningMedian, news2_pulse_score
from detectors.config import DetectorConfig
from detectors.episodes import CLEARED, OPENED, PicklesWithConfig, Sustained

__all__ = ["HeartRateDetector"]

_SIG = "heart_rate"
_SAMPLE_MS = 30_000  # abrupt-change ring resolution
_RING = 13  # 6 minutes of 30-s samples
_LAG = 4  # the jump is judged 2 minutes after it ended (steps for those minutes have arrived)
_SHORT = 4  # 2 minutes of 30-s samples: the short bradycardia median


def _median(xs: list[float]) -> float:
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

    def __init__(self, config: DetectorConfig | None = None) -> None:
        self.config = config or DetectorConfig()
        self._med: RunningMedian | None = None
        self._lp = LowPass(self.config.hr_smooth_tau_s * 1000)
        self._last_ts = -1
        self._last_v = float("nan")
        self._ring: list[float] = []
        self._ring_next = -1
        #: 30-s samples of the conditioned rate over ``hr_low_robust_window_s`` (bradycardia)
        self._slow: list[float] = []
        self._med_long = float("nan")
        self._med_short = float("nan")
        self._brady_escalate = False
        self._deep_since = -1
        self.tachy = Sustained()
        self.brady = Sustained()
        self.news2 = Sustained()
        self.abrupt = Sustained()
        self._tachy_peak = 0.0
        self._news2_score = 0
        self._news2_score_t = 0
        self.late = 0
        self.duplicates = 0
        #: after each update: at rest and no acute episode (input for baseline models)
        self.rest_ok = False

    @property
    def last_ts(self) -> int:
        return self._last_ts

    @property
    def smoothed(self) -> float:
        """The conditioned heart rate after the newest reading."""
        return self._lp.y

    def _finding(
        self, kind: str, priority: Priority, ts: int, onset: int, message: str, *,
        baseline: float | None = None, **kw: Any,
    ) -> Finding:
        return rule_finding(_SIG, kind, priority, ts, onset, message,
                            baseline=None if baseline is None else round(baseline, 1), **kw)

    def update(self, ts: int, v: float, activity: ActivityTracker) -> list[Finding]:
        """Process one reading (bpm) at ``ts``; ``activity`` answers "at rest?"."""
        cfg = self.config
        last = self._last_ts
        if ts <= last:
            if ts == last and v == self._last_v:
                self.duplicates += 1
            else:
                self.late += 1
            return []
        med = self._med
        if med is None:
            med = self._med = RunningMedian(cfg.hr_median_window)
        if last >= 0 and ts - last > cfg.hr_max_gap_s * 1000:
            med.reset()
            self._lp.reset()
            self._ring.clear()
            self._slow.clear()
            self._med_long = self._med_short = float("nan")
            self._ring_next = -1
            self.tachy.reset_timer()
            self.brady.reset_timer()
            self.news2.reset_timer()
        self._last_ts = ts
        self._last_v = v
        s = self._lp.push(ts, med.push(v))
        rest = activity.at_rest(ts)
        out: list[Finding] = []
        sampled = ts >= self._ring_next
        if sampled:
            self._ring_next = (ts // _SAMPLE_MS + 1) * _SAMPLE_MS
            slow = self._slow
            slow.append(s)
            if len(slow) > max(_SHORT, int(cfg.hr_low_robust_window_s * 1000) // _SAMPLE_MS):
                del slow[0]
            self._brady_stats()

        # bradycardia (no activity condition); see the module docstring
        brady = self.brady
        if s < cfg.hr_low_bpm + cfg.hr_low_baseline_margin_bpm or brady.since >= 0 or brady.onset_ms >= 0:
            self._bradycardia(ts, s, out)

        # tachycardia at rest
        tachy = self.tachy
        thr = cfg.hr_rest_high_bpm
        if s > thr or tachy.since >= 0 or tachy.onset_ms >= 0:
            if tachy.since < 0:
                self._tachy_peak = 0.0
            r = tachy.step(
                ts, s > thr and rest, s < cfg.hr_rest_high_clear_bpm,
                cfg.hr_rest_high_sustain_s * 1000, cfg.hr_clear_s * 1000, 60_000,
            )
            if tachy.since >= 0 or tachy.onset_ms >= 0 or r != 0:
                self._tachy_peak = max(self._tachy_peak, s)
            if r == OPENED:
                urgent = s >= cfg.hr_rest_high_urgent_bpm
                self._news2_score_t = 3 if urgent else 2
                steps = activity.steps_in_window(ts)
                out.append(self._finding(
                    "tachycardia_at_rest", Priority.HIGH if urgent else Priority.MEDIUM, ts,
                    tachy.onset_ms,
                    f"High heart rate at rest: {s:.0f} bpm, above {thr:g} for "
                    f"{(ts - tachy.onset_ms) / 60_000:.0f} min while inactive "
                    f"({steps:.0f} steps in {cfg.rest_window_s / 60:g} min); NEWS2 pulse score "
                    f"{news2_pulse_score(s)}",
                    value=s, threshold=thr, window_s=cfg.hr_rest_high_sustain_s,
                    baseline=self._tachy_peak, contributing=(_SIG, "steps"),
                ))
            elif r == CLEARED:
                urgent = self._news2_score_t >= 3
                out.append(self._finding(
                    "tachycardia_at_rest", Priority.HIGH if urgent else Priority.MEDIUM, ts,
                    tachy.last_onset_ms,
                    f"High heart rate resolved: {s:.0f} bpm",
                    value=s, threshold=cfg.hr_rest_high_clear_bpm, window_s=cfg.hr_clear_s,
                    contributing=(_SIG, "steps"), cleared=True,
                ))

        # NEWS2 pulse band at rest (suppressed while a specific episode is open)
        if cfg.hr_news2_min_score > 0:
            score = news2_pulse_score(s)
            n2 = self.news2
            if score >= cfg.hr_news2_min_score or n2.since >= 0 or n2.onset_ms >= 0:
                specific = tachy.onset_ms >= 0 or brady.onset_ms >= 0
                r = n2.step(
                    ts, score >= cfg.hr_news2_min_score and rest and not specific,
                    score < cfg.hr_news2_min_score or specific,
                    cfg.hr_news2_sustain_s * 1000, cfg.hr_clear_s * 1000, 60_000,
                )
                if r == OPENED:
                    self._news2_score = score
                    out.append(self._finding(
                        "hr_news2_band", Priority.MEDIUM if score >= 3 else Priority.LOW, ts,
                        n2.onset_ms,
                        f"Heart rate {s:.0f} bpm at rest scores NEWS2 pulse {score} for "
                        f"{(ts - n2.onset_ms) / 60_000:.0f} min",
                        value=s, threshold=float(cfg.hr_news2_min_score),
                        window_s=cfg.hr_news2_sustain_s, contributing=(_SIG, "steps"),
                    ))
                elif r == CLEARED:
                    out.append(self._finding(
                        "hr_news2_band",
                        Priority.MEDIUM if self._news2_score >= 3 else Priority.LOW, ts,
                        n2.last_onset_ms, f"NEWS2 pulse band resolved: {s:.0f} bpm",
                        value=s, threshold=float(cfg.hr_news2_min_score),
                        window_s=cfg.hr_clear_s, contributing=(_SIG, "steps"), cleared=True,
                    ))

        # abrupt change at rest: the conditioned HR moved by >= delta between 6 and 2
        # minutes ago, and the steps from before the jump until now show rest (so the
        # start of a walk, whose steps arrive a minute late, is not mistaken for it)
        if sampled:
            ring = self._ring
            ring.append(s)
            if len(ring) > _RING:
                del ring[0]
            ab = self.abrupt
            jump = ring[-1 - _LAG] - ring[0] if len(ring) == _RING else 0.0
            big = abs(jump) >= cfg.hr_abrupt_delta_bpm and rest
            if big or ab.onset_ms >= 0:
                r = ab.step(ts, big, not big, 0, cfg.hr_abrupt_hold_s * 1000)
                if r == OPENED:
                    out.append(self._finding(
                        "hr_abrupt_change", Priority.LOW, ts, ab.onset_ms,
                        f"Abrupt heart-rate change at rest: {jump:+.0f} bpm within "
                        f"{(_RING - 1 - _LAG) * _SAMPLE_MS / 60_000:g} min, now {s:.0f} bpm",
                        value=s, threshold=cfg.hr_abrupt_delta_bpm,
                        window_s=(_RING - 1 - _LAG) * _SAMPLE_MS / 1000, baseline=ring[0],
                        trend_per_min=jump / ((_RING - 1 - _LAG) * _SAMPLE_MS / 60_000),
                        contributing=(_SIG, "steps"),
                    ))
                elif r == CLEARED:
                    out.append(self._finding(
                        "hr_abrupt_change", Priority.LOW, ts, ab.last_onset_ms,
                        f"Heart rate stable again at {s:.0f} bpm",
                        value=s, threshold=cfg.hr_abrupt_delta_bpm,
                        window_s=cfg.hr_abrupt_hold_s, contributing=(_SIG, "steps"), cleared=True,
                    ))

        self.rest_ok = rest and tachy.onset_ms < 0 and brady.onset_ms < 0
        return out

    def _bradycardia(self, ts: int, s: float, out: list[Finding]) -> None:
        cfg = self.config
        brady = self.brady
        low = cfg.hr_low_bpm
        med_l, med_s = self._med_long, self._med_short
        near = len(self._slow) >= 2 * _SHORT and med_l < low + cfg.hr_low_baseline_margin_bpm
        # "deep": the 2-min median is clearly below both the threshold and the patient's recent rate
        deep = med_s <= min(low, med_l) - cfg.hr_low_deep_bpm
        if brady.onset_ms >= 0 and self._brady_escalate:
            # an episode opened on the median path (a patient sleeping near 40) must not
            # hide a further, acute drop: close it and open a new one, once
            if deep:
                if self._deep_since < 0:
                    self._deep_since = ts
                if ts - self._deep_since >= cfg.hr_low_sustain_s * 1000:
                    old = brady.close_now()
                    out.append(self._finding(
                        "bradycardia", Priority.HIGH, ts, old,
                        f"Low heart rate episode superseded: rate fell further to {s:.0f} bpm",
                        value=s, threshold=low, window_s=cfg.hr_low_sustain_s, cleared=True,
                    ))
                    brady.open_now(self._deep_since)
                    self._brady_escalate = False
                    self._deep_since = -1
                    out.append(self._finding(
                        "bradycardia", Priority.HIGH, ts, brady.onset_ms,
                        f"Low heart rate falling further: {s:.0f} bpm, 2-min median {med_s:.0f} bpm, "
                        f"{med_l - med_s:.0f} bpm below this patient's recent "
                        f"{cfg.hr_low_robust_window_s / 60:g}-min median (NEWS2 pulse score 3)",
                        value=s, threshold=low, window_s=_SHORT * _SAMPLE_MS / 1000, baseline=med_l,
                    ))
                    return
            else:
                self._deep_since = -1
        on = (deep or med_l < low) if near else s < low
        clear_at = low + cfg.hr_low_median_clear_bpm
        off = s > cfg.hr_low_clear_bpm or (med_l >= clear_at and med_s >= clear_at)
        if near:
            on_s = cfg.hr_low_sustain_s if deep else cfg.hr_low_robust_sustain_s
        elif med_l >= low + cfg.hr_low_abrupt_depth_bpm:  # False while nan (no recent rate)
            on_s = cfg.hr_low_abrupt_sustain_s
        else:
            on_s = cfg.hr_low_sustain_s
        r = brady.step(ts, on, off, on_s * 1000, cfg.hr_clear_s * 1000, 15_000)
        if r == OPENED:
            self._brady_escalate = near and not deep
            self._deep_since = -1
            if not near:
                why = f"below {low:g} for {(ts - brady.onset_ms) / 1000:.0f} s"
                win = on_s
            elif deep:
                why = f"2-min median {med_s:.0f} bpm"
                win = _SHORT * _SAMPLE_MS / 1000
            else:
                why = (f"{cfg.hr_low_robust_window_s / 60:g}-min median {med_l:.0f} bpm for "
                       f"{(ts - brady.onset_ms) / 60_000:.0f} min")
                win = cfg.hr_low_robust_window_s
            out.append(self._finding(
                "bradycardia", Priority.HIGH, ts, brady.onset_ms,
                f"Low heart rate: {s:.0f} bpm, {why} (NEWS2 pulse score 3)",
                value=s, threshold=low, window_s=win,
                baseline=med_l if med_l == med_l else None,
            ))
        elif r == CLEARED:
            self._brady_escalate = False
            out.append(self._finding(
                "bradycardia", Priority.HIGH, ts, brady.last_onset_ms,
                f"Low heart rate resolved: {s:.0f} bpm",
                value=s, threshold=cfg.hr_low_clear_bpm, window_s=cfg.hr_clear_s, cleared=True,
            ))

    def _brady_stats(self) -> None:
        slow = self._slow
        if slow:
            self._med_long = _median(slow)
            self._med_short = _median(slow[-_SHORT:])
        else:
            self._med_long = self._med_short = float("nan")

    # -- pickling: builtins only (see PatientMonitor.__reduce__) ---------------------
    def dump_state(self) -> tuple[Any, ...]:
        """The state without the config, as builtins only (:meth:`load_state` is the inverse).

        Filters and episode machines go in as tuples: pickling each as an object costs ~1 µs.
        """
        med = self._med
        return (
            None if med is None else med.dump_state(), self._lp.dump_state(), self._last_ts, self._last_v,
            self._ring, self._ring_next, self.tachy.dump_state(), self.brady.dump_state(),
            self.news2.dump_state(), self.abrupt.dump_state(),
            self._tachy_peak, self._news2_score, self._news2_score_t, self.late, self.duplicates,
            self._slow, self._brady_escalate, self._deep_since,
        )

    def load_state(self, config: DetectorConfig, s: tuple[Any, ...]) -> None:
        """Set config and state from :meth:`dump_state` (also on an instance made by ``__new__``)."""
        self.config = config
        (med, lp, self._last_ts, self._last_v, self._ring, self._ring_next, tachy, brady, news2, abrupt,
         self._tachy_peak, self._news2_score, self._news2_score_t, self.late, self.duplicates,
         self._slow, self._brady_escalate, self._deep_since) = s
        self._med = None if med is None else RunningMedian.from_state(med)
        self._lp = LowPass.from_state(lp)
        load = Sustained.from_state
        self.tachy, self.brady, self.news2, self.abrupt = load(tachy), load(brady), load(news2), load(abrupt)
        self.rest_ok = False
        self._brady_stats()

