"""Patient states pickled by an earlier version of the detectors load and go on exactly as before.

The worker restores every patient's state (detectors and alert lifecycle) from its
changelog after a restart or a rebalance, so a new version of the detectors must
load what the previous one stored. ``tests/fixtures/detector_states.pickle.gz`` was
made by ``tests/fixtures/make_detector_states.py`` with the detectors as they were
before the rules became a table: per case, the pickled worker state and monitor,
cut mid-episode, the readings that followed and the findings and alert events that
version produced for them.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import pickle
import re
from pathlib import Path
from typing import Any

import pytest

from detectors import DetectorConfig, Finding, PatientMonitor

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"


def _load_fixture() -> dict[str, Any]:
    with gzip.open(FIXTURES / "detector_states.pickle.gz", "rb") as f:
        data: dict[str, Any] = pickle.load(f)
    assert data["version"] == 1
    return data["cases"]


def _maker() -> Any:
    spec = importlib.util.spec_from_file_location("make_detector_states", FIXTURES / "make_detector_states.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


CASES = _load_fixture()
MAKER = _maker()


def test_fixture_covers_open_episodes_of_every_detector() -> None:
    # what the fixture must exercise: states restored mid-episode in every part
    seen: set[str] = set()
    for case in CASES.values():
        st = pickle.loads(case["state"])
        m = st.monitor
        for part in (m._glucose, m._hr):
            seen |= {f"{type(part).__name__}:{i}" for i, ep in enumerate(part.episodes) if ep.onset_ms >= 0}
        seen |= {f"stale:{i}" for i, ep in enumerate(m._quality.stale) if ep.onset_ms >= 0}
        seen |= {f"implausible:{i}" for i, ep in enumerate(m._quality.implausible) if ep.onset_ms >= 0}
        seen |= {f"flat:{i}" for i, ep in enumerate(m._quality.flat) if ep.since >= 0}
        if m._hr.episodes[0].armed:
            seen.add("bradycardia-armed")
        if m._hr_model is not None and m._hr_model.sketch is not None:
            seen.add("models-warm")
    assert {
        "GlucoseDetector:0", "GlucoseDetector:1", "GlucoseDetector:5",  # urgent low, low, urgent low soon
        "HeartRateDetector:0", "HeartRateDetector:1",  # bradycardia, tachycardia at rest
        "bradycardia-armed", "stale:0", "implausible:1", "flat:0", "models-warm",
    } <= seen


#: fields of an alert event added after the fixture was made, with the value an old state's alerts get
ADDED_EVENT_FIELDS: dict[str, Any] = {"notes": []}


#: behaviour changed on purpose since the fixture was made: an urgent low opened by a reading at the CGM's
#: floor (40 mg/dL or less) says so instead of showing the floor as if it were the measured glucose
_URGENT_AT_FLOOR = re.compile(r"^Urgent low glucose: (\d+) mg/dL, below 55(.*)$")
_FLOOR_MESSAGE = "Urgent low glucose: at or below the sensor's lowest reading (40 mg/dL), below 55"


def _message_now(message: str) -> str:
    m = _URGENT_AT_FLOOR.match(message)
    return _FLOOR_MESSAGE + m.group(2) if m is not None and int(m.group(1)) <= 40 else message


def _event_now(ev: dict[str, Any]) -> dict[str, Any]:
    return {k: _message_now(v) if k == "message" else _event_now(v) if isinstance(v, dict) else v
            for k, v in ev.items()}


def _finding_now(f: Finding) -> Finding:
    return dataclasses.replace(f, message=_message_now(f.message))


#: defaults changed on purpose since the fixture was made: the urgent-low forecast no longer warns on a
#: forecast short of 55, follows a fall that levels off and waits for a second reading after a drop faster
#: than glucose moves; the rate alerts read the robust slope. An old
#: state goes on with the new defaults in the worker; here it goes on with the settings of its time, so
#: the comparison shows that the stored state itself is read and continued exactly
SETTINGS_WHEN_RECORDED: dict[str, Any] = {
    "glucose_predict_margin_mgdl": 8.0, "glucose_predict_levelling": 0.0, "glucose_rate_robust": False,
    "glucose_predict_max_step_mgdl_min": float("inf")}


@pytest.mark.parametrize("name", sorted(CASES))
def test_old_state_loads_and_continues_with_the_same_findings_and_alerts(name: str) -> None:
    case = CASES[name]
    st = pickle.loads(case["state"])
    assert st.monitor.config == DetectorConfig().with_overrides(case["overrides"])
    restore, (diff, *parts) = st.monitor.__reduce__()
    st.monitor = restore({**SETTINGS_WHEN_RECORDED, **diff}, *parts)
    findings, events = MAKER._feed(name, st, MAKER.unpack(case["readings_after"]), ticks=True)
    assert [Finding.from_state(f) for f in findings] == [
        _finding_now(Finding.from_state(f)) for f in case["findings_after"]]
    # alert events have gained fields since the fixture was made; a restored state gives them their defaults
    assert events == [{**ADDED_EVENT_FIELDS, **_event_now(ev)} for ev in case["events_after"]]
    assert len(findings) > 0


@pytest.mark.parametrize("name", sorted(CASES))
def test_old_monitor_pickle_keeps_its_layout(name: str) -> None:
    # a state written by the old version, loaded and written again, is the same bytes: both
    # versions read each other's states (a rolled-back worker too)
    blob = CASES[name]["monitor"]
    m = pickle.loads(blob)
    assert isinstance(m, PatientMonitor)
    assert pickle.dumps(m, protocol=pickle.HIGHEST_PROTOCOL) == blob
