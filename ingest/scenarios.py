"""Seeded scenario generator: heart rate, steps and CGM glucose with labelled episodes.

Pure numpy. One patient over a time range is simulated on a one-minute grid
(physiology) and sampled like real devices:

* heart rate every 5 s (wrist optical sensor: AR(1) noise, integer bpm, brief
  false spikes during activity — motion artefacts);
* steps per minute (stamped at the start of the minute, sent at its end);
* CGM glucose every 5 min (noise growing with the level, integer mg/dL, or
  mmol/L with one decimal for some patients' devices).

The physiology has a circadian rhythm (lower HR asleep, never below a healthy sleeping
45 bpm without an injected bradycardia; dawn phenomenon), sleep,
meals (gamma-shaped glucose responses), walking bouts, exercise sessions, and
injected :class:`Event` s: level-2 hypoglycemia (a realistic descent to a nadir
below 54 mg/dL, held ≥ 15 min, then recovery), hyperglycemia, tachycardia at
rest, bradycardia, a resting-HR drift over days and a change of glucose
variability.

Delivery artefacts (``artefacts=True``): watch-off gaps (readings lost), CGM
signal loss with the backlog delivered in a burst at re-sync, duplicates,
network jitter, occasional late (out-of-order) heart-rate readings and rare
physiologically impossible values. Dropouts are not placed over injected events.

Labelled episodes are computed from the *true* (noise-free) signals by the
clinical criteria, not just copied from the injected events, so natural
excursions (a meal spike above 250 for 30 min) are labelled too:

=========================  ====================================================
kind                       criterion (criterion_met_ms = start + duration)
=========================  ====================================================
hypoglycemia_l2            glucose < 54 mg/dL for ≥ 15 min
hypoglycemia_l1            glucose < 70 mg/dL for ≥ 15 min
hyperglycemia              glucose > 250 mg/dL for ≥ 30 min
glucose_rapid_change       |15-min slope| ≥ 2 mg/dL/min for ≥ 5 min
tachycardia_at_rest        HR > 130 bpm at rest (≤ 20 steps/10 min) for ≥ 10 min
tachycardia_at_rest_l1     HR > 120 bpm at rest for ≥ 10 min
bradycardia                HR < 40 bpm for ≥ 1 min
hr_resting_drift           injected drift; criterion when it reaches 7 bpm
glucose_variability_change injected; criterion one day after its start
=========================  ====================================================

Examples
--------
>>> data = simulate_patient("p-001", 0, 6 * 3_600_000, seed=7, artefacts=False)
>>> sorted(data.counts().items())
[('glucose', 72), ('heart_rate', 4320), ('steps', 360)]
>>> r = next(iter_readings("p-001", 0, 3_600_000, seed=7, artefacts=False))
>>> r.signal, r.unit, r.ts_ms
('heart_rate', 'bpm', 0)
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from wearwatch.contract.times import format_rfc3339
from wearwatch.contract.units import MMOL_TO_MGDL

__all__ = [
    "DEFAULT_START_MS",
    "EPISODE_KINDS",
    "EVENT_KINDS",
    "MAGNITUDE_RANGE",
    "Cohort",
    "Episode",
    "Event",
    "PatientData",
    "PatientProfile",
    "Reading",
    "iter_readings",
    "make_profile",
    "random_events",
    "simulate_cohort",
    "simulate_patient",
]

MIN_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
#: 2026-01-05T00:00:00Z, a Monday
DEFAULT_START_MS = 1_767_571_200_000
#: lowest heart rate (bpm) of a patient's own physiology, asleep included: healthy adults sleep at
#: about 45-60 bpm, and below 40 is bradycardia (NEWS2 pulse score 3), which only an injected event makes
NORMAL_HR_FLOOR_BPM = 45.0

EVENT_KINDS: tuple[str, ...] = (
    "hypoglycemia",
    "hyperglycemia",
    "tachycardia_at_rest",
    "bradycardia",
    "hr_drift",
    "glucose_variability",
)
EPISODE_KINDS: tuple[str, ...] = (
    "hypoglycemia_l2",
    "hypoglycemia_l1",
    "hyperglycemia",
    "glucose_rapid_change",
    "tachycardia_at_rest",
    "tachycardia_at_rest_l1",
    "bradycardia",
    "hr_resting_drift",
    "glucose_variability_change",
)
_SIGNALS = ("heart_rate", "glucose", "steps")


class Reading(NamedTuple):
    """One device reading. ``arrival_ms`` is when it reaches the gateway."""

    ts_ms: int
    patient_id: str
    signal: str
    value: float
    unit: str
    arrival_ms: int


class Episode(NamedTuple):
    """A labelled episode: ``criterion_met_ms`` is when its definition was first satisfied."""

    patient_id: str
    kind: str
    start_ms: int
    end_ms: int
    criterion_met_ms: int


#: event kind -> (low, high) of the uniform draw of a random magnitude (see :class:`Event`)
MAGNITUDE_RANGE: dict[str, tuple[float, float]] = {
    "hypoglycemia": (40.0, 50.0),
    "hyperglycemia": (275.0, 340.0),
    "tachycardia_at_rest": (136.0, 165.0),
    "bradycardia": (31.0, 37.0),
    "hr_drift": (10.0, 16.0),
    "glucose_variability": (2.0, 2.6),
}


@dataclass(frozen=True)
class Event:
    """An injected event. ``magnitude`` meaning depends on the kind (nan = random).

    hypoglycemia: nadir mg/dL; hyperglycemia: peak mg/dL; tachycardia_at_rest,
    bradycardia: heart rate bpm; hr_drift: bpm added at the end of the ramp;
    glucose_variability: factor on meal responses and glucose wander.

    A nan magnitude is drawn (seeded) from :data:`MAGNITUDE_RANGE` by
    :meth:`resolved` / :func:`simulate_patient`; infinite magnitudes are refused.

    >>> import numpy as np
    >>> e = Event("bradycardia", 0, 600_000).resolved(np.random.default_rng(0))
    >>> 31.0 <= e.magnitude <= 37.0
    True
    >>> Event("bradycardia", 0, 600_000, 34.0).resolved(np.random.default_rng(0)).magnitude
    34.0
    """

    kind: str
    start_ms: int
    duration_ms: int
    magnitude: float = math.nan

    def __post_init__(self) -> None:
        if self.kind not in EVENT_KINDS:
            raise ValueError(f"unknown event kind {self.kind!r}; expected one of {EVENT_KINDS}")
        if math.isinf(self.magnitude):
            raise ValueError(f"event magnitude must be finite or nan (random), got {self.magnitude}")

    def resolved(self, rng: np.random.Generator) -> Event:
        """This event with a nan (random) magnitude replaced by a draw from ``rng``."""
        if not math.isnan(self.magnitude):
            return self
        lo, hi = MAGNITUDE_RANGE[self.kind]
        return Event(self.kind, self.start_ms, self.duration_ms, float(rng.uniform(lo, hi)))


@dataclass(frozen=True)
class PatientProfile:
    """Per-patient physiology and device settings."""

    resting_hr: float = 64.0
    glucose_base: float = 120.0
    meal_gain: float = 1.0
    glucose_unit: str = "mg/dL"
    sleep_hour: float = 23.0
    wake_hour: float = 7.0
    exercise_prob: float = 0.5
    hr_noise_sd: float = 1.5


def make_profile(rng: np.random.Generator) -> PatientProfile:
    """A random but plausible profile.

    >>> make_profile(np.random.default_rng(0)).glucose_unit in ("mg/dL", "mmol/L")
    True
    """
    return PatientProfile(
        resting_hr=float(np.clip(rng.normal(64, 7), 50, 82)),
        glucose_base=float(rng.uniform(105, 140)),
        meal_gain=float(rng.uniform(0.7, 1.4)),
        glucose_unit="mmol/L" if rng.random() < 0.3 else "mg/dL",
        sleep_hour=float(rng.uniform(22.0, 24.0)),
        wake_hour=float(rng.uniform(6.0, 8.0)),
        exercise_prob=float(rng.uniform(0.2, 0.7)),
        hr_noise_sd=float(rng.uniform(1.0, 2.5)),
    )


def random_events(
    start_ms: int,
    end_ms: int,
    rng: np.random.Generator,
    *,
    per_day: dict[str, float] | None = None,
    drift_prob: float = 0.3,
    variability_prob: float = 0.15,
) -> list[Event]:
    """Random non-overlapping events for one patient.

    ``per_day`` gives the expected count per day of each acute kind (defaults:
    hypoglycemia 0.5, hyperglycemia 0.25, tachycardia_at_rest 0.3, bradycardia
    0.2). Slow events (drift, variability change) start after day 2.5 and only
    when the range is at least 4 days.

    >>> evs = random_events(0, 5 * 86_400_000, np.random.default_rng(3))
    >>> all(e.start_ms >= 0 for e in evs)
    True
    """
    rates = {"hypoglycemia": 0.5, "hyperglycemia": 0.25, "tachycardia_at_rest": 0.3,
             "bradycardia": 0.2}
    if per_day:
        rates.update(per_day)
    days = (end_ms - start_ms) / DAY_MS
    events: list[Event] = []
    busy: list[tuple[int, int]] = []

    def free(a: int, b: int) -> bool:
        return all(b + 2 * HOUR_MS <= s or a >= e + 2 * HOUR_MS for s, e in busy)

    for kind, rate in rates.items():
        n = int(rng.poisson(rate * days))
        for _ in range(n):
            for _try in range(20):
                if kind == "hypoglycemia":
                    dur = int(rng.uniform(70, 130) * MIN_MS)
                    # nocturnal (1-5 h) or late afternoon (15-18 h): away from meals
                    hour = rng.uniform(1, 5) if rng.random() < 0.5 else rng.uniform(15, 17.5)
                elif kind == "hyperglycemia":
                    dur = int(rng.uniform(100, 240) * MIN_MS)
                    hour = rng.uniform(9, 21)
                elif kind == "tachycardia_at_rest":
                    dur = int(rng.uniform(14, 45) * MIN_MS)
                    hour = rng.uniform(0, 24)
                else:  # bradycardia
                    dur = int(rng.uniform(3, 15) * MIN_MS)
                    hour = rng.uniform(0, 24)
                mag = float(rng.uniform(*MAGNITUDE_RANGE[kind]))
                day = int(rng.integers(0, max(1, int(days))))
                t0 = start_ms + day * DAY_MS + int(hour * HOUR_MS)
                t0 -= t0 % MIN_MS
                if t0 < start_ms + 2 * HOUR_MS or t0 + dur > end_ms - HOUR_MS:
                    continue
                if free(t0, t0 + dur):
                    events.append(Event(kind, t0, dur, mag))
                    busy.append((t0, t0 + dur))
                    break
    if days >= 4:
        if rng.random() < drift_prob:
            t0 = start_ms + int(rng.uniform(2.6, days - 1.5) * DAY_MS)
            t0 -= t0 % MIN_MS
            events.append(Event("hr_drift", t0, end_ms - t0, float(rng.uniform(*MAGNITUDE_RANGE["hr_drift"]))))
        if rng.random() < variability_prob:
            t0 = start_ms + int(rng.uniform(2.6, days - 1.5) * DAY_MS)
            t0 -= t0 % MIN_MS
            events.append(Event("glucose_variability", t0, end_ms - t0,
                                float(rng.uniform(*MAGNITUDE_RANGE["glucose_variability"]))))
    events.sort(key=lambda e: e.start_ms)
    return events


@dataclass
class PatientData:
    """The simulated readings of one patient (columnar, arrival order) and its labels."""

    patient_id: str
    profile: PatientProfile
    events: list[Event]
    episodes: list[Episode]
    ts_ms: np.ndarray
    arrival_ms: np.ndarray
    signal: np.ndarray  # int8 index into ("heart_rate", "glucose", "steps")
    value: np.ndarray  # in the device's unit
    unit: np.ndarray  # int8: 0 bpm, 1 mg/dL, 2 mmol/L, 3 steps
    truth_hr: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0))
    truth_glucose: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0))
    truth_steps: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0))

    def __len__(self) -> int:
        return len(self.ts_ms)

    def counts(self) -> dict[str, int]:
        """Readings per signal."""
        c = np.bincount(self.signal.astype(np.int64), minlength=3)
        return {s: int(c[i]) for i, s in enumerate(_SIGNALS)}

    def __iter__(self) -> Iterator[Reading]:
        units = ("bpm", "mg/dL", "mmol/L", "steps")
        pid = self.patient_id
        for t, a, s, v, u in zip(
            self.ts_ms.tolist(), self.arrival_ms.tolist(), self.signal.tolist(),
            self.value.tolist(), self.unit.tolist(), strict=True,
        ):
            yield Reading(t, pid, _SIGNALS[s], v, units[u], a)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) index pairs of True runs."""
    if not mask.any():
        return []
    d = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    starts = np.flatnonzero(d == 1)
    ends = np.flatnonzero(d == -1)
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


def _first_order(target: np.ndarray, tau_up: float, tau_down: float) -> np.ndarray:
    out = np.empty_like(target)
    y = float(target[0])
    a_up = 1 - math.exp(-1 / tau_up)
    a_dn = 1 - math.exp(-1 / tau_down)
    for i, x in enumerate(target.tolist()):
        y += (a_up if x > y else a_dn) * (x - y)
        out[i] = y
    return out


def simulate_patient(
    patient_id: str,
    start_ms: int,
    end_ms: int,
    *,
    seed: int,
    events: Sequence[Event] | None = None,
    profile: PatientProfile | None = None,
    artefacts: bool = True,
) -> PatientData:
    """Simulate one patient over ``[start_ms, end_ms)``.

    Parameters
    ----------
    patient_id
        Goes into every reading and episode.
    start_ms, end_ms
        Epoch milliseconds; ``start_ms`` is rounded down to a minute.
    seed
        Everything random derives from it (same seed, same output).
    events
        Events to inject; ``None`` draws them with :func:`random_events`, ``[]`` injects none.
    profile
        Physiology; ``None`` draws one with :func:`make_profile`.
    artefacts
        Add delivery artefacts (dropouts, bursts, duplicates, jitter, glitches).

    Examples
    --------
    >>> ev = Event("hypoglycemia", 2 * 3_600_000, 100 * 60_000, 45.0)
    >>> d = simulate_patient("p", 0, 6 * 3_600_000, seed=1, events=[ev], artefacts=False)
    >>> [e.kind for e in d.episodes if e.kind.startswith("hypo")]
    ['hypoglycemia_l1', 'hypoglycemia_l2']
    """
    rng = np.random.default_rng(seed)
    prof = profile if profile is not None else make_profile(rng)
    start_ms -= start_ms % MIN_MS
    n = max(1, int((end_ms - start_ms) // MIN_MS))
    t_min = start_ms + np.arange(n, dtype=np.int64) * MIN_MS
    if events is None:
        events = random_events(start_ms, start_ms + n * MIN_MS, rng)
    # nan magnitudes ("random") are drawn from their own seeded stream, so resolving
    # them never shifts the draws of the physiology below
    mag_rng = np.random.default_rng([seed, 7])
    events = sorted((e.resolved(mag_rng) for e in events), key=lambda e: e.start_ms)
    hour = ((t_min % DAY_MS) / HOUR_MS).astype(np.float64)
    day_idx = ((t_min - (start_ms - start_ms % DAY_MS)) // DAY_MS).astype(np.int64)
    n_days = int(day_idx[-1]) + 1

    def ev_index(e: Event) -> tuple[int, int]:
        a = int((e.start_ms - start_ms) // MIN_MS)
        b = int((e.start_ms + e.duration_ms - start_ms) // MIN_MS)
        return max(0, a), min(n, b)

    # --- sleep and activity --------------------------------------------------------
    sleep_h = prof.sleep_hour + rng.normal(0, 0.4, n_days + 1)
    wake_h = prof.wake_hour + rng.normal(0, 0.3, n_days + 1)
    asleep = np.zeros(n, dtype=bool)
    for d in range(n_days):
        dm = day_idx == d
        asleep |= dm & (hour < wake_h[d])
        asleep |= dm & (hour >= sleep_h[d])
    steps = np.zeros(n)
    awake_idx = np.flatnonzero(~asleep)
    # fidgeting: a few steps in ~10% of awake minutes
    fid = awake_idx[rng.random(awake_idx.size) < 0.10]
    steps[fid] = rng.integers(1, 12, fid.size)
    # walking bouts ~1.2 per awake hour
    n_bouts = int(rng.poisson(1.2 * awake_idx.size / 60))
    for i in rng.choice(awake_idx, size=min(n_bouts, awake_idx.size), replace=False):
        ln = int(rng.integers(2, 16))
        steps[i : i + ln] = rng.uniform(70, 115)
    exercise = np.zeros(n, dtype=bool)
    for d in range(n_days):
        if rng.random() < prof.exercise_prob:
            cand = np.flatnonzero((day_idx == d) & ~asleep & (hour > 8) & (hour < 20))
            if cand.size:
                i = int(rng.choice(cand))
                ln = int(rng.integers(25, 60))
                steps[i : i + ln] = rng.uniform(125, 165, size=len(steps[i : i + ln]))
                exercise[i : i + ln] = True
    steps[asleep] = 0.0
    # keep acute HR events and the 15 minutes before them at rest
    for e in events:
        if e.kind in ("tachycardia_at_rest", "bradycardia"):
            a, b = ev_index(e)
            steps[max(0, a - 15) : b + 2] = 0.0
            exercise[max(0, a - 15) : b + 2] = False
    steps = np.round(steps * rng.uniform(0.9, 1.1, n))

    # --- heart rate (minute level, true) --------------------------------------------
    circ = 3.0 * np.sin(2 * np.pi * (hour - 10) / 24)
    target = prof.resting_hr + circ - 9.0 * asleep
    walk = (steps > 40) & ~exercise
    target = target + np.where(walk, 0.25 * steps, 0.0) + np.where(exercise, 0.45 * steps, 0.0)
    target = target + np.where((steps > 0) & (steps <= 40), 0.2 * steps, 0.0)
    for e in events:
        if e.kind == "hr_drift":
            a, _b = ev_index(e)
            ramp = np.clip((np.arange(n) - a) / (2.0 * 1440), 0, 1)
            target = target + e.magnitude * ramp
    # a low resting rate asleep (resting 50, night -3, sleep -9) stays a healthy sleeping rate
    target = np.maximum(target, NORMAL_HR_FLOOR_BPM)
    hr = _first_order(target, 0.8, 2.5)
    for e in events:
        if e.kind in ("tachycardia_at_rest", "bradycardia"):
            a, b = ev_index(e)
            k = np.arange(a, b)
            ramp_in = _smoothstep((k - a) / 1.5)
            ramp_out = _smoothstep((b - k) / 1.5)
            w = np.minimum(ramp_in, ramp_out)
            lvl = e.magnitude + rng.normal(0, 1.5, k.size)
            hr[a:b] = hr[a:b] * (1 - w) + lvl * w
    hr = np.clip(hr, 25, 220)

    # --- glucose (minute level, true) ----------------------------------------------
    var_factor = np.ones(n)
    for e in events:
        if e.kind == "glucose_variability":
            a, _b = ev_index(e)
            var_factor[a:] = e.magnitude
    g = prof.glucose_base + 15.0 * np.exp(-0.5 * ((hour - 6.0) / 1.5) ** 2)  # dawn phenomenon
    meal_times: list[int] = []
    for d in range(n_days):
        for h_mu, p in ((7.6, 1.0), (12.6, 1.0), (19.1, 1.0), (16.0, 0.4)):
            if rng.random() < p:
                t0 = (start_ms - start_ms % DAY_MS) + d * DAY_MS + int(
                    (h_mu + rng.normal(0, 0.6)) * HOUR_MS
                )
                meal_times.append(t0)
    kmin = np.arange(n, dtype=np.float64)
    for t0 in meal_times:
        am = (t0 - start_ms) / MIN_MS
        if am >= n or am < -400:
            continue
        amp = prof.meal_gain * rng.uniform(25, 70)
        tp = rng.uniform(55, 80)
        x = np.clip((kmin - am) / tp, 0, None)
        i0 = int(np.clip(am, 0, n - 1))
        amp *= var_factor[i0]
        g += amp * x * x * np.exp(2 * (1 - x))
    # exercise lowers glucose a little, with a slow recovery
    ex_eff = _first_order(np.where(exercise, -30.0, 0.0), 20, 90)
    g += ex_eff
    # slow wander (AR(1) at minute resolution)
    wander = np.empty(n)
    z = 0.0
    noise = rng.normal(0, 0.7, n) * var_factor
    for i in range(n):
        z = 0.995 * z + noise[i]
        wander[i] = z
    g += wander
    g = np.maximum(g, 75.0)  # the controller keeps it out of lows unless an event says so
    for e in events:
        if e.kind not in ("hypoglycemia", "hyperglycemia"):
            continue
        a, b = ev_index(e)
        if b <= a:
            continue
        kf = np.arange(a, b, dtype=np.float64)
        g_start = float(g[a])
        if e.kind == "hypoglycemia":
            rate = rng.uniform(0.9, 2.2)
            ramp_up = max(15.0, (g_start - e.magnitude) / rate)
            ramp_dn = (e.magnitude + 60 - e.magnitude) / rng.uniform(1.5, 3.0) + 20
        else:
            rate = rng.uniform(1.0, 1.8)
            ramp_up = max(20.0, (e.magnitude - g_start) / rate)
            ramp_dn = (e.magnitude - 180) / rng.uniform(0.8, 1.4)
        ramp_up = min(ramp_up, 0.45 * (b - a))
        ramp_dn = min(ramp_dn, 0.4 * (b - a))
        # linear-ish descent (smoothstep only at the ends) keeps the rate realistic
        w_in = np.clip((kf - a) / ramp_up, 0, 1)
        w_in = np.where(w_in < 0.15, _smoothstep(w_in / 0.3) * 0.3, w_in)
        w_out = _smoothstep((b - kf) / ramp_dn)
        w = np.minimum(w_in, w_out)
        lvl = e.magnitude + rng.normal(0, 0.8, kf.size).cumsum() * 0.15
        g[a:b] = g[a:b] * (1 - w) + lvl * w
    g = np.clip(g, 39.0, 401.0)

    # --- labels from the truth ------------------------------------------------------
    episodes = _label(patient_id, t_min, hr, g, steps, events)

    # --- sampling ---------------------------------------------------------------------
    hr_ts = np.arange(start_ms, start_ms + n * MIN_MS, 5_000, dtype=np.int64)
    hr_true = np.interp((hr_ts - start_ms) / MIN_MS, kmin, hr)
    ar = np.empty(hr_ts.size)
    z = 0.0
    eps = rng.normal(0, prof.hr_noise_sd * math.sqrt(1 - 0.85**2), hr_ts.size)
    for i in range(hr_ts.size):
        z = 0.85 * z + eps[i]
        ar[i] = z
    hr_obs = hr_true + ar + rng.normal(0, 0.8, hr_ts.size)
    # motion artefacts: brief false spikes while walking or exercising
    active_5s = np.repeat(steps > 60, 12)[: hr_ts.size]
    spikes = np.flatnonzero(active_5s & (rng.random(hr_ts.size) < 0.01))
    for i in spikes:
        ln = int(rng.integers(1, 4))
        hr_obs[i : i + ln] += rng.uniform(25, 60)
    hr_obs = np.round(np.clip(hr_obs, 30, 230))

    phase = int(rng.integers(0, 300)) * 1000
    g_ts = np.arange(start_ms + phase, start_ms + n * MIN_MS, 300_000, dtype=np.int64)
    g_true = np.interp((g_ts - start_ms) / MIN_MS, kmin, g)
    g_obs = g_true + rng.normal(0, 1, g_ts.size) * (3.0 + 0.04 * g_true)
    g_obs = np.clip(np.round(g_obs), 40, 400)

    st_ts = t_min.copy()
    st_obs = steps.copy()

    ts = [hr_ts, g_ts, st_ts]
    vals = [hr_obs, g_obs, st_obs]
    arr = [
        hr_ts + rng.integers(300, 3000, hr_ts.size),
        g_ts + rng.integers(1000, 60_000, g_ts.size),
        st_ts + MIN_MS + rng.integers(500, 5000, st_ts.size),
    ]
    keep = [np.ones(x.size, dtype=bool) for x in ts]
    if artefacts:
        _add_artefacts(rng, start_ms, n, events, ts, vals, arr, keep)

    sig = np.concatenate([np.full(int(k.sum()), i, dtype=np.int8) for i, k in enumerate(keep)])
    ts_all = np.concatenate([t[k] for t, k in zip(ts, keep, strict=True)])
    arr_all = np.concatenate([a[k] for a, k in zip(arr, keep, strict=True)])
    val_all = np.concatenate([v[k] for v, k in zip(vals, keep, strict=True)])
    g_unit = 2 if prof.glucose_unit == "mmol/L" else 1
    unit_all = np.choose(sig, [0, g_unit, 3]).astype(np.int8)
    if g_unit == 2:
        gm = sig == 1
        val_all[gm] = np.round(val_all[gm] / MMOL_TO_MGDL, 1)
    # duplicates (re-sent readings)
    if artefacts:
        dup = np.flatnonzero(rng.random(ts_all.size) < 0.003)
        ts_all = np.concatenate([ts_all, ts_all[dup]])
        arr_all = np.concatenate([arr_all, arr_all[dup] + rng.integers(1000, 30_000, dup.size)])
        val_all = np.concatenate([val_all, val_all[dup]])
        sig = np.concatenate([sig, sig[dup]])
        unit_all = np.concatenate([unit_all, unit_all[dup]])
    if not np.isfinite(val_all).all():  # pragma: no cover - a generator bug, never data
        raise RuntimeError(f"simulated readings of {patient_id!r} contain NaN or inf values")
    order = np.lexsort((sig, ts_all, arr_all))
    return PatientData(
        patient_id=patient_id, profile=prof, events=list(events), episodes=episodes,
        ts_ms=ts_all[order], arrival_ms=arr_all[order], signal=sig[order],
        value=val_all[order], unit=unit_all[order],
        truth_hr=hr, truth_glucose=g, truth_steps=steps,
    )


def _add_artefacts(
    rng: np.random.Generator,
    start_ms: int,
    n: int,
    events: Sequence[Event],
    ts: list[np.ndarray],
    vals: list[np.ndarray],
    arr: list[np.ndarray],
    keep: list[np.ndarray],
) -> None:
    end_ms = start_ms + n * MIN_MS
    protected = [
        (e.start_ms - 45 * MIN_MS, e.start_ms + e.duration_ms + 45 * MIN_MS)
        for e in events
        if e.kind not in ("hr_drift", "glucose_variability")
    ]

    def clear(a: int, b: int) -> bool:
        return all(b <= s or a >= e for s, e in protected)

    days = max(1, round(n / 1440))
    # watch off (shower, charging): HR and steps lost
    for _ in range(int(rng.poisson(0.7 * days))):
        a = start_ms + int(rng.integers(0, n)) * MIN_MS
        b = a + int(rng.uniform(10, 90)) * MIN_MS
        if b < end_ms and clear(a, b):
            for i in (0, 2):
                keep[i] &= ~((ts[i] >= a) & (ts[i] < b))
    # CGM signal loss: backlog delivered in a burst at re-sync
    for _ in range(int(rng.poisson(0.4 * days))):
        a = start_ms + int(rng.integers(0, n)) * MIN_MS
        b = a + int(rng.uniform(20, 120)) * MIN_MS
        if b < end_ms and clear(a, b):
            m = (ts[1] >= a) & (ts[1] < b)
            arr[1][m] = b + 2000 + 50 * np.arange(int(m.sum()))
    # a watch re-sync burst: 5-30 min of HR and steps delivered late, in order
    for _ in range(int(rng.poisson(0.5 * days))):
        a = start_ms + int(rng.integers(0, n)) * MIN_MS
        b = a + int(rng.uniform(5, 30)) * MIN_MS
        if b < end_ms and clear(a, b):
            for i in (0, 2):
                m = (ts[i] >= a) & (ts[i] < b)
                arr[i][m] = b + 1000 + 5 * np.arange(int(m.sum()))
    # occasional late HR readings (arrive after newer ones)
    late = rng.random(ts[0].size) < 0.002
    arr[0][late] += rng.integers(10_000, 60_000, int(late.sum()))
    # rare sensor glitches: impossible values (0 or 255 bpm). Assumed rate: about one
    # every 4 days per patient (1.5e-5 per 5-s reading); no published rate for consumer
    # PPG firmware was found, and the previous 2e-4 (3.5 per patient-day) would make
    # every watch look broken. Other rates above, per patient-day (assumptions, of the
    # order reported for consumer wearables in remote monitoring): watch off for a
    # shower or charging 0.7 (10-90 min), CGM signal loss 0.4 (20-120 min, backlog
    # delivered at re-sync), phone re-sync bursts 0.5 (5-30 min late), duplicates 0.3 %
    # of readings, late heart-rate readings 0.2 %.
    glitch = rng.random(ts[0].size) < 1.5e-5
    vals[0][glitch] = rng.choice([0.0, 255.0], int(glitch.sum()))


def _label(
    pid: str,
    t_min: np.ndarray,
    hr: np.ndarray,
    g: np.ndarray,
    steps: np.ndarray,
    events: Sequence[Event],
) -> list[Episode]:
    out: list[Episode] = []
    n = t_min.size

    def add(kind: str, mask: np.ndarray, min_len: int) -> None:
        for a, b in _runs(mask):
            if b - a >= min_len:
                out.append(Episode(pid, kind, int(t_min[a]), int(t_min[b - 1]) + MIN_MS,
                                   int(t_min[a]) + min_len * MIN_MS))

    add("hypoglycemia_l2", g < 54, 15)
    add("hypoglycemia_l1", g < 70, 15)
    add("hyperglycemia", g > 250, 30)
    slope = np.zeros(n)
    if n > 15:
        slope[15:] = (g[15:] - g[:-15]) / 15.0
    add("glucose_rapid_change", np.abs(slope) >= 2.0, 5)
    cs = np.concatenate(([0.0], np.cumsum(steps)))
    idx = np.arange(n)
    win = cs[idx + 1] - cs[np.maximum(0, idx - 9)]
    rest = win <= 20
    add("tachycardia_at_rest", (hr > 130) & rest, 10)
    add("tachycardia_at_rest_l1", (hr > 120) & rest, 10)
    add("bradycardia", hr < 40, 1)
    for e in events:
        if e.kind == "hr_drift":
            ramp_min = 2.0 * 1440
            crit = e.start_ms + int(7.0 / e.magnitude * ramp_min * MIN_MS)
            out.append(Episode(pid, "hr_resting_drift", e.start_ms, e.start_ms + e.duration_ms, crit))
        elif e.kind == "glucose_variability":
            out.append(Episode(pid, "glucose_variability_change", e.start_ms,
                               e.start_ms + e.duration_ms, e.start_ms + DAY_MS))
    out.sort(key=lambda x: (x.start_ms, x.kind))
    return out


def iter_readings(
    patient_id: str,
    start_ms: int,
    end_ms: int,
    *,
    seed: int,
    events: Sequence[Event] | None = None,
    profile: PatientProfile | None = None,
    artefacts: bool = True,
) -> Iterator[Reading]:
    """Readings of one patient in arrival order (what a device would publish, when).

    The whole range is simulated up front (about 20k readings per day), then
    yielded. For live publishing, wait until ``reading.arrival_ms`` before sending.
    """
    yield from simulate_patient(
        patient_id, start_ms, end_ms, seed=seed, events=events, profile=profile,
        artefacts=artefacts,
    )


@dataclass
class Cohort:
    """Several simulated patients: readings merged in arrival order, and all labels."""

    patients: list[PatientData]
    start_ms: int
    end_ms: int

    @property
    def episodes(self) -> list[Episode]:
        return [e for p in self.patients for e in p.episodes]

    @property
    def patient_days(self) -> float:
        return len(self.patients) * (self.end_ms - self.start_ms) / DAY_MS

    def __len__(self) -> int:
        return sum(len(p) for p in self.patients)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(ts_ms, arrival_ms, patient_index, signal, value, unit)`` merged by arrival."""
        ts = np.concatenate([p.ts_ms for p in self.patients])
        arr = np.concatenate([p.arrival_ms for p in self.patients])
        pidx = np.concatenate([np.full(len(p), i, dtype=np.int32) for i, p in enumerate(self.patients)])
        sig = np.concatenate([p.signal for p in self.patients])
        val = np.concatenate([p.value for p in self.patients])
        unit = np.concatenate([p.unit for p in self.patients])
        order = np.argsort(arr, kind="stable")
        return ts[order], arr[order], pidx[order], sig[order], val[order], unit[order]

    def write_csv(self, path: str, *, ts_format: str = "epoch") -> int:
        """Write ``ts,patient_id,signal,value,unit`` in arrival order; returns the row count.

        ``ts_format`` is ``"epoch"`` (seconds with milliseconds) or ``"rfc3339"``.
        """
        ts, _arr, pidx, sig, val, unit = self.arrays()
        ids = [p.patient_id for p in self.patients]
        units = ("bpm", "mg/dL", "mmol/L", "steps")
        n = 0
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write("ts,patient_id,signal,value,unit\n")
            buf = io.StringIO()
            for t, p, s, v, u in zip(ts.tolist(), pidx.tolist(), sig.tolist(), val.tolist(),
                                     unit.tolist(), strict=True):
                tss = f"{t / 1000:.3f}" if ts_format == "epoch" else format_rfc3339(t)
                buf.write(f"{tss},{ids[p]},{_SIGNALS[s]},{v:g},{units[u]}\n")
                n += 1
                if n % 100_000 == 0:
                    f.write(buf.getvalue())
                    buf = io.StringIO()
            f.write(buf.getvalue())
        return n

    def write_episodes(self, path: str) -> int:
        """Write labelled episodes as CSV ``patient_id,kind,start_ms,end_ms,criterion_met_ms``."""
        eps = self.episodes
        with open(path, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            w.writerow(Episode._fields)
            w.writerows(eps)
        return len(eps)


def simulate_cohort(
    n_patients: int,
    days: float,
    *,
    seed: int,
    start_ms: int = DEFAULT_START_MS,
    artefacts: bool = True,
    per_day: dict[str, float] | None = None,
) -> Cohort:
    """``n_patients`` independent patients over ``days`` days (patient i uses seed ``seed*1000+i``).

    >>> c = simulate_cohort(2, 0.25, seed=5)
    >>> len(c.patients), c.patient_days
    (2, 0.5)
    """
    end_ms = start_ms + int(days * DAY_MS)
    patients = []
    for i in range(n_patients):
        s = seed * 1000 + i
        rng = np.random.default_rng([s, 1])
        ev = random_events(start_ms, end_ms, rng, per_day=per_day)
        patients.append(simulate_patient(f"sim-{seed}-{i:03d}", start_ms, end_ms, seed=s,
                                         events=ev, artefacts=artefacts))
    return Cohort(patients, start_ms, end_ms)
