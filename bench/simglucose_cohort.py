"""A second, independent cohort generator: the UVA/Padova type 1 simulator (``simglucose``) for glucose.

The in-house generator (:mod:`ingest.scenarios`) draws glucose curves from a
handful of shapes the detectors were tuned on. This one takes glucose from
simglucose's virtual patients (the FDA-accepted UVA/Padova model as published
in the ``simglucose`` package: 10 adolescents, 10 adults, 10 children), so a
detector setting that only fits the in-house shapes shows up here.

Per patient (everything seeded; same seed, same cohort):

* **glucose physiology**: one simglucose virtual patient, stepped minute by
  minute, with simglucose's random meal scenario (``RandomScenario``: three
  meals and optional snacks a day), meal boluses by carbohydrate ratio plus a
  correction above 150 mg/dL (its basal-bolus therapy; about one meal bolus in
  ten forgotten, which gives highs), and **over-boluses** that cause lows: on
  about three days in four an excess correction (drop of 120-230 mg/dL by the
  patient's correction factor) in the afternoon or late evening. The patient
  treats a low with 15-25 g of fast carbohydrate 20-40 min after glucose fell
  below 54 mg/dL, and again every 15 min while it stays below 70;
* **CGM**: simglucose's sensor models with their noise (Johnson-distributed,
  autocorrelated): GuardianRT (every 5 min) for about two patients in three,
  Dexcom (every 3 min) for the others; readings clamped to the sensor's
  reporting range 40-400 mg/dL, a reading below 40 shown as the device's floor
  (39 or 40, per device: "LOW"); about 30 % of the patients' devices report
  mmol/L with one decimal;
* **CGM delivery**: signal loss (0.4 per day, 20-120 min) delivered as a burst
  at re-sync, lost stretches (0.15 per day, 15-45 min) never delivered,
  network delay 1-60 s;
* **heart rate and steps**: the in-house generator's (sleep, walks, exercise,
  motion artefacts, watch-off gaps, re-sync bursts, duplicates, glitches) with
  its resting tachycardia and bradycardia events;
* **labels** from the *true* signals by the same clinical criteria as the
  in-house generator (:func:`ingest.scenarios._label`): level-2 hypoglycemia
  = simglucose's true glucose below 54 mg/dL for 15 min, starting at its
  true crossing of 54; level 1 below 70; hyperglycemia above 250 for 30 min;
  tachycardia at rest, bradycardia from the true heart rate and steps.

Cohorts are cached under ``out/simglucose/`` keyed by seed, size and
:data:`GENERATOR_VERSION`; a 26-patient x 2-day cohort takes about 10 minutes to generate.

Needs the ``bench`` extra (``pip install -e '.[bench]'``, done by ``make venv``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import pickle
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ingest.scenarios import (  # noqa: E402
    DAY_MS,
    DEFAULT_START_MS,
    MIN_MS,
    MMOL_TO_MGDL,
    Cohort,
    PatientData,
    _label,
    make_profile,
    random_events,
    simulate_patient,
)

__all__ = ["PATIENT_NAMES", "SENSORS", "cgm_display", "simulate_sg_cohort", "simulate_sg_patient"]

log = logging.getLogger(__name__)

CACHE = ROOT / "out" / "simglucose"
PATIENT_NAMES: tuple[str, ...] = tuple(
    f"{group}#{k:03d}" for group in ("adolescent", "adult", "child") for k in range(1, 11)
)
#: simglucose CGM models used, with the share of patients wearing each
SENSORS: tuple[tuple[str, float], ...] = (("GuardianRT", 2 / 3), ("Dexcom", 1 / 3))
CGM_MIN, CGM_MAX = 40.0, 400.0


def cgm_display(values: np.ndarray, floor: float = 39.0) -> np.ndarray:
    """What a CGM shows for these sensor values: whole mg/dL within 40-400, anything lower as ``floor``.

    >>> cgm_display(np.array([12.0, 38.6, 39.6, 123.4, 650.0]), floor=39.0).tolist()
    [39.0, 39.0, 40.0, 123.0, 400.0]
    >>> cgm_display(np.array([12.0]), floor=40.0).tolist()
    [40.0]
    """
    shown = np.round(np.clip(values, CGM_MIN - 1.0, CGM_MAX))
    shown[shown < CGM_MIN] = floor
    return shown


def _quiet_simglucose() -> None:
    for name in ("simglucose", "simglucose.patient.t1dpatient", "simglucose.simulation.scenario_gen"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _glucose(name: str, sensor_name: str, n: int, start: datetime, rng: np.random.Generator,
             days: float, over_bolus: Sequence[tuple[float, float]] | None = None,
             ) -> tuple[np.ndarray, list[tuple[int, float]], dict[str, object]]:
    """Minute-level true glucose (simglucose's BG) and the CGM readings ``[(minute, mg/dL)]``.

    ``over_bolus``: ``(hour from the start, intended drop in mg/dL)`` pairs; ``None`` draws them.
    """
    import pandas as pd
    from simglucose.actuator.pump import InsulinPump
    from simglucose.controller.basal_bolus_ctrller import CONTROL_QUEST, PATIENT_PARA_FILE
    from simglucose.patient.t1dpatient import Action, T1DPatient
    from simglucose.sensor.cgm import CGMSensor
    from simglucose.simulation.scenario_gen import RandomScenario

    _quiet_simglucose()
    quest = pd.read_csv(CONTROL_QUEST)
    params = pd.read_csv(PATIENT_PARA_FILE)
    q = quest[quest.Name == name].iloc[0]
    p = params[params.Name == name].iloc[0]
    cr, cf = float(q.CR), float(q.CF)
    basal = float(p.u2ss) * float(p.BW) / 6000.0  # U/min that holds the patient's steady state
    patient = T1DPatient.withName(name)
    sensor = CGMSensor.withName(sensor_name, seed=int(rng.integers(1, 2**31 - 1)))
    pump = InsulinPump.withName("Insulet")
    scenario = RandomScenario(start_time=start, seed=int(rng.integers(1, 2**31 - 1)))
    st = int(sensor.sample_time)
    # over-boluses: on ~3 days in 4, afternoon (14-17 h) or late evening (21-23.5 h)
    over: dict[int, float] = {}
    for hour, drop in over_bolus or ():
        over[int(hour * 60)] = drop / cf
    for d in range(0 if over_bolus is not None else math.ceil(days)):
        if rng.random() < 0.75:
            hour = rng.uniform(14.0, 17.0) if rng.random() < 0.5 else rng.uniform(21.0, 23.5)
            k = int(d * 1440 + hour * 60)
            if 120 <= k < n - 180:
                over[k] = float(rng.uniform(120.0, 230.0)) / cf  # units of insulin beyond need
    forget = 0.1
    bg = np.empty(n)
    cgm: list[tuple[int, float]] = []
    low_since = -1
    treat_after = float(rng.uniform(20, 40))
    last_treat = -10_000
    extra_carbs = 0.0
    last_cgm = float(patient.observation.Gsub)
    for k in range(n):
        meal = float(scenario.get_action(start + timedelta(minutes=k)).meal)
        bolus = 0.0
        if meal > 0 and rng.random() >= forget:
            bolus = meal / cr + (max(0.0, last_cgm - 140.0) / cf if last_cgm > 150.0 else 0.0)
        if k in over:
            bolus += over[k]
        # the patient treats a low: 20-40 min below 54, then every 15 min while below 70
        g_now = float(patient.observation.Gsub)
        if g_now < 54.0:
            low_since = k if low_since < 0 else low_since
        elif g_now >= 70.0:
            low_since = -1
        if low_since >= 0 and k - low_since >= treat_after and k - last_treat >= 15:
            extra_carbs = float(rng.uniform(15, 25))
            last_treat = k
            treat_after = float(rng.uniform(20, 40))
        carbs = meal + extra_carbs
        extra_carbs = 0.0
        patient.step(Action(insulin=pump.basal(basal) + pump.bolus(bolus), CHO=carbs))
        bg[k] = float(patient.observation.Gsub)
        if patient.t % st == 0:
            last_cgm = float(sensor.measure(patient))
            cgm.append((k, last_cgm))
    meta = {"name": name, "sensor": sensor_name, "over_boluses": len(over), "cr": cr, "cf": cf}
    return bg, cgm, meta


def simulate_sg_patient(patient_id: str, name: str, start_ms: int, days: float, *, seed: int,
                        over_bolus: Sequence[tuple[float, float]] | None = None) -> PatientData:
    """One patient: simglucose glucose + CGM, in-house heart rate and steps, labels from the truth.

    ``over_bolus``: ``(hour from the start, intended drop in mg/dL)`` of each excess correction bolus;
    ``None`` draws them (on ~3 days in 4, afternoon or late evening).
    """
    rng = np.random.default_rng([seed, 11])
    n = int(days * 1440)
    end_ms = start_ms + n * MIN_MS
    prof = make_profile(np.random.default_rng([seed, 12]))
    unit = "mmol/L" if rng.random() < 0.3 else "mg/dL"
    prof = dataclasses.replace(prof, glucose_unit=unit)
    sensor_name = SENSORS[0][0] if rng.random() < SENSORS[0][1] else SENSORS[1][0]
    floor = 39.0 if rng.random() < 0.5 else 40.0
    # heart rate and steps: the in-house generator with its heart-rate events only
    ev_rng = np.random.default_rng([seed, 13])
    events = [e for e in random_events(start_ms, end_ms, ev_rng, per_day={"hypoglycemia": 0.0,
                                                                        "hyperglycemia": 0.0})
              if e.kind in ("tachycardia_at_rest", "bradycardia")]
    hs = simulate_patient(patient_id, start_ms, end_ms, seed=seed, events=events, profile=prof, artefacts=True)
    keep = hs.signal != 1  # its own glucose readings are replaced
    # glucose from simglucose
    start = datetime.fromtimestamp(start_ms / 1000, UTC).replace(tzinfo=None)
    bg, cgm, _meta = _glucose(name, sensor_name, n, start, rng, days, over_bolus)
    g_min = np.array([k for k, _ in cgm], dtype=np.int64)
    phase = int(rng.integers(0, 60)) * 1000
    g_ts = start_ms + g_min * MIN_MS + phase
    g_val = cgm_display(np.array([v for _, v in cgm]), floor)
    g_arr = g_ts + rng.integers(1000, 60_000, g_ts.size)
    g_keep = np.ones(g_ts.size, dtype=bool)
    ndays = max(1.0, days)
    for _ in range(int(rng.poisson(0.4 * ndays))):  # signal loss, backlog delivered at re-sync
        a = start_ms + int(rng.integers(0, n)) * MIN_MS
        b = a + int(rng.uniform(20, 120)) * MIN_MS
        m = (g_ts >= a) & (g_ts < b)
        g_arr[m] = b + 2000 + 50 * np.arange(int(m.sum()))
    for _ in range(int(rng.poisson(0.15 * ndays))):  # lost for good
        a = start_ms + int(rng.integers(0, n)) * MIN_MS
        b = a + int(rng.uniform(15, 45)) * MIN_MS
        g_keep &= ~((g_ts >= a) & (g_ts < b))
    g_ts, g_arr, g_val = g_ts[g_keep], g_arr[g_keep], g_val[g_keep]
    g_unit = 2 if unit == "mmol/L" else 1
    if g_unit == 2:
        g_val = np.round(g_val / MMOL_TO_MGDL, 1)
    ts = np.concatenate([hs.ts_ms[keep], g_ts])
    arr = np.concatenate([hs.arrival_ms[keep], g_arr])
    sig = np.concatenate([hs.signal[keep], np.ones(g_ts.size, dtype=np.int8)])
    val = np.concatenate([hs.value[keep], g_val])
    unit_a = np.concatenate([hs.unit[keep], np.full(g_ts.size, g_unit, dtype=np.int8)])
    order = np.lexsort((sig, ts, arr))
    t_min = start_ms + np.arange(n, dtype=np.int64) * MIN_MS
    episodes = _label(patient_id, t_min, hs.truth_hr, bg, hs.truth_steps, events)
    return PatientData(
        patient_id=patient_id, profile=prof, events=events, episodes=episodes,
        ts_ms=ts[order], arrival_ms=arr[order], signal=sig[order], value=val[order], unit=unit_a[order],
        truth_hr=hs.truth_hr, truth_glucose=bg, truth_steps=hs.truth_steps,
    )


#: bump when the generated cohorts change (the cache under out/simglucose/ is keyed by it); 2: the
#: in-house heart rate asleep no longer falls below a healthy 45 bpm without an injected bradycardia
GENERATOR_VERSION = 2


def simulate_sg_cohort(n_patients: int, days: int, *, seed: int, start_ms: int = DEFAULT_START_MS,
                       cache: bool = True, progress: bool = True) -> Cohort:
    """``n_patients`` simglucose patients over ``days`` days (virtual patients drawn without replacement
    while there are enough, patient ``i`` seeded ``seed * 1000 + i``); cached under ``out/simglucose/``."""
    path = CACHE / f"cohort-s{seed}-n{n_patients}-d{days}-v{GENERATOR_VERSION}.pkl"
    if cache and path.is_file():
        with path.open("rb") as f:
            cohort: Cohort = pickle.load(f)
        return cohort
    rng = np.random.default_rng([seed, 10])
    names: list[str] = []
    while len(names) < n_patients:
        names += [PATIENT_NAMES[i] for i in rng.permutation(len(PATIENT_NAMES))]
    patients = []
    t0 = time.perf_counter()
    for i in range(n_patients):
        patients.append(simulate_sg_patient(f"sg-{seed}-{i:03d}", names[i], start_ms, days, seed=seed * 1000 + i))
        if progress:
            print(f"  simglucose seed {seed}: patient {i + 1}/{n_patients} ({names[i]}) "
                  f"{time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    cohort = Cohort(patients, start_ms, start_ms + int(days * DAY_MS))
    if cache:
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as f:
            pickle.dump(cohort, f, protocol=pickle.HIGHEST_PROTOCOL)
        tmp.replace(path)
    return cohort


if __name__ == "__main__":  # generate (and cache) cohorts: python bench/simglucose_cohort.py SEED [SEED ...]
    import argparse

    ap = argparse.ArgumentParser(description="generate and cache simglucose cohorts")
    ap.add_argument("seeds", type=int, nargs="+")
    ap.add_argument("--patients", type=int, default=26)
    ap.add_argument("--days", type=int, default=2)
    a = ap.parse_args()
    for s in a.seeds:
        c = simulate_sg_cohort(a.patients, a.days, seed=s)
        kinds: dict[str, int] = {}
        for e in c.episodes:
            kinds[e.kind] = kinds.get(e.kind, 0) + 1
        print(f"seed {s}: {len(c.patients)} patients, {len(c):,} readings, episodes {kinds}")
