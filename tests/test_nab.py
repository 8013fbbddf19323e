"""Tests of the NAB scorer (hand-computed cases) and of ``wearwatch nab`` on tiny files."""

from __future__ import annotations

import argparse
import csv
import json
import math
import tarfile
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from tools import nab
from tools.nab import PROFILES, file_score, normalised_score, probationary_length, score_curve
from wearwatch.errors import WearwatchError

STD = PROFILES["standard"]
LOW_FP = PROFILES["reward_low_FP_rate"]
LOW_FN = PROFILES["reward_low_FN_rate"]
# the 31 NAB series this project develops on, kept beside the tests (tests/fixtures/nab, MIT licence), so that the
# tests below run on the real files wherever the project is checked out
NAB_ARCHIVE = Path(__file__).resolve().parent / "fixtures" / "nab" / "nab-shared-half.tar.gz"
N = 1000  # probationary period: 150 rows
WIN = (300, 399)  # W = 100 rows


def _det(*rows: int, n: int = N) -> list[bool]:
    d = [False] * n
    for r in rows:
        d[r] = True
    return d


def test_profiles_and_probation() -> None:
    assert (STD.a_tp, STD.a_fn, STD.a_fp) == (1.0, 1.0, 0.11)
    assert (LOW_FP.a_tp, LOW_FP.a_fn, LOW_FP.a_fp) == (1.0, 1.0, 0.22)
    assert (LOW_FN.a_tp, LOW_FN.a_fn, LOW_FN.a_fp) == (1.0, 2.0, 0.11)
    assert probationary_length(1000) == 150
    assert probationary_length(4032) == 604
    assert probationary_length(10_000) == 750


def test_perfect_and_null_detectors() -> None:
    windows = [(300, 399), (600, 649)]
    for prof in PROFILES.values():
        perfect = file_score(_det(300, 600), windows, prof)
        assert perfect.raw == pytest.approx(2 * prof.a_tp, abs=1e-12)
        assert normalised_score(perfect.raw, 2, prof) == pytest.approx(100.0)
        null = file_score(_det(), windows, prof)
        assert null.raw == -2 * prof.a_fn
        assert normalised_score(null.raw, 2, prof) == 0.0


def test_single_fp_before_any_window_costs_exactly_a_fp() -> None:
    for prof in PROFILES.values():
        base = file_score(_det(300), [WIN], prof).raw
        with_fp = file_score(_det(200, 300), [WIN], prof)
        assert with_fp.raw - base == pytest.approx(-prof.a_fp, abs=1e-15)
        assert (with_fp.tp, with_fp.fp, with_fp.fn) == (1, 1, 0)
    # a file without windows: one FP is -A_FP
    assert file_score(_det(500), [], STD).raw == pytest.approx(-0.11, abs=1e-15)


def test_detection_inside_window_hand_computed() -> None:
    # earliest detection at i = 349: y = -(399 - 349 + 1) / 100 = -0.51
    # sigma(-0.51) = 2 / (1 + e^-2.55) - 1 = 0.8551470292769645, sigma(-1) = 0.9866142981514303
    r = file_score(_det(349, 360, 390), [WIN], STD)
    assert r.raw == pytest.approx(0.8551470292769645 / 0.9866142981514303, rel=1e-12)
    assert r.raw == pytest.approx(0.8667490739584967, rel=1e-12)
    assert (r.tp, r.fp, r.fn) == (1, 0, 0)  # later detections in the window are free
    # the last row of the window: y = -1 / 100
    last = file_score(_det(399), [WIN], STD).raw
    assert last == pytest.approx((2 / (1 + math.exp(-0.05)) - 1) / 0.9866142981514303, rel=1e-12)


def test_fp_after_a_window_is_sigmoid_weighted() -> None:
    # r_prev = 399, W_prev = 100: a detection at 498 has y = 99 / 99 = 1 -> sigma(1) = -0.9866142981514303
    r = file_score(_det(498), [WIN], STD)
    assert r.raw == pytest.approx(-1.0 + 0.11 * -0.9866142981514303, rel=1e-12)
    # half a width after the window: y = 0.5 -> sigma = -0.8482836399575129
    r = file_score(_det(399 + 49), [WIN], LOW_FP)  # y = 49 / 99
    y = 49 / 99
    assert r.raw == pytest.approx(-1.0 + 0.22 * (2 / (1 + math.exp(5 * y)) - 1), rel=1e-12)
    # y >= 3 costs the full A_FP
    assert file_score(_det(399 + 297), [WIN], STD).raw == pytest.approx(-1.11, abs=1e-12)


def test_probationary_detections_and_windows_do_not_count() -> None:
    # a detection at row 100 (< 150) is ignored, the window at 300 is missed
    assert file_score(_det(100), [WIN], STD).raw == -1.0
    # a window wholly inside the probationary period is not counted at all
    r = file_score(_det(50), [(20, 80), WIN], STD)
    assert r.n_windows == 1
    assert r.raw == -1.0


def test_reward_low_fn_profile_misses_cost_two() -> None:
    r = file_score(_det(200), [WIN, (600, 699)], LOW_FN)
    assert r.raw == pytest.approx(-2.0 - 2.0 - 0.11, abs=1e-12)
    assert normalised_score(r.raw, 2, LOW_FN) == pytest.approx(100 * (r.raw + 4.0) / 6.0)


def test_score_curve_matches_file_score() -> None:
    rng = np.random.default_rng(3)
    scores = rng.random(N) ** 8
    windows = [(300, 399), (600, 649), (900, 979)]
    thresholds = np.array([0.0, 0.2, 0.5, 0.8, 0.95, 0.99, 1.0, 1.5])
    for prof in PROFILES.values():
        curve = score_curve(scores, windows, prof, thresholds)
        for t, c in zip(thresholds, curve, strict=True):
            assert c == pytest.approx(file_score(list(scores >= t), windows, prof).raw, abs=1e-9)


# ---------------------------------------------------------------------------
# wearwatch nab on two tiny generated files, and evaluate_results


def _write_csv(path: Path, n: int, spike_at: int | None, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    t0 = datetime(2024, 1, 1)
    stamps = [(t0 + timedelta(minutes=5 * i)).strftime("%Y-%m-%d %H:%M:%S") for i in range(n)]
    values = rng.uniform(10.0, 20.0, n)
    if spike_at is not None:
        values[spike_at] = 80.0
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["timestamp", "value"])
        for s, v in zip(stamps, values, strict=True):
            w.writerow([s, f"{v:.4f}"])
    return stamps


def test_wearwatch_nab_tiny_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "nab" / "data"
    stamps_a = _write_csv(data / "catA" / "spiky.csv", 1200, spike_at=1000, seed=1)
    _write_csv(data / "catB" / "calm.csv", 700, spike_at=None, seed=2)
    labels = {
        "catA/spiky.csv": [[stamps_a[990] + ".000000", stamps_a[1049] + ".000000"]],
        "catB/calm.csv": [],
    }
    (tmp_path / "nab" / "labels.json").write_text(json.dumps(labels))
    out = tmp_path / "results"
    parser = argparse.ArgumentParser()
    nab.add_arguments(parser)
    args = parser.parse_args([str(data), "--out", str(out)])
    assert nab.run(args) == 0
    printed = capsys.readouterr().out
    assert "2 files" in printed

    for rel, n in (("catA/spiky.csv", 1200), ("catB/calm.csv", 700)):
        with (out / rel).open(newline="") as fh:
            rows = list(csv.reader(fh))
        assert rows[0] == ["timestamp", "value", "anomaly_score", "alarm"]
        assert len(rows) == n + 1
        for row in rows[1:]:
            assert 0.0 <= float(row[2]) <= 1.0
            assert row[3] in ("0", "1")
    with (out / "catA/spiky.csv").open(newline="") as fh:
        spiky = list(csv.DictReader(fh))
    assert [i for i, r in enumerate(spiky) if r["alarm"] == "1"] == [1000]
    assert spiky[1000]["timestamp"] == stamps_a[1000]

    # the scorer on these results: one window detected at 1000 of [990, 1049], no FP
    assert nab.evaluate_results(out, tmp_path / "nab" / "labels.json", data) == 0
    table = capsys.readouterr().out
    expected = (2 / (1 + math.exp(-5 * 50 / 60)) - 1) / (2 / (1 + math.exp(-5)) - 1)  # i=1000, r=1049, W=60
    score = normalised_score(expected, 1, STD)
    std_line = next(ln for ln in table.splitlines() if ln.startswith("standard"))
    assert std_line.split()[1] == f"{score:.1f}"


def _two_series(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    data = tmp_path / "nab" / "data"
    stamps_a = _write_csv(data / "catA" / "spiky.csv", 1200, spike_at=1000, seed=1)
    _write_csv(data / "catB" / "calm.csv", 700, spike_at=None, seed=2)
    labels = {"catA/spiky.csv": [[stamps_a[990] + ".000000", stamps_a[1049] + ".000000"]], "catB/calm.csv": []}
    (tmp_path / "nab" / "labels.json").write_text(json.dumps(labels))
    return data, tmp_path / "nab" / "labels.json", stamps_a


@pytest.mark.parametrize("given", ["file", "folder", "two-files"])
def test_wearwatch_nab_scores_the_subset_it_is_given(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       given: str) -> None:
    data, _labels, _ = _two_series(tmp_path)
    inputs = {"file": [data / "catA" / "spiky.csv"], "folder": [data / "catA"],
              "two-files": [data / "catA" / "spiky.csv", data / "catB" / "calm.csv"]}[given]
    out = tmp_path / "results"
    parser = argparse.ArgumentParser()
    nab.add_arguments(parser)
    assert nab.run(parser.parse_args([*map(str, inputs), "--out", str(out)])) == 0  # labels.json found above
    printed = capsys.readouterr().out
    n = 2 if given == "two-files" else 1
    assert f"({n} of the 2 labelled series, alarm column)" in printed
    assert (out / "catA" / "spiky.csv").is_file()
    assert (out / "catB" / "calm.csv").is_file() == (given == "two-files")
    std = next(ln for ln in printed.splitlines() if ln.startswith("standard"))
    assert std.split()[3:7] == ["1", "1", "0", "0"]  # windows, TP, FN, FP: the one labelled window, found


def test_evaluate_scores_the_results_present(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, labels, _ = _two_series(tmp_path)
    out = tmp_path / "results"
    parser = argparse.ArgumentParser()
    nab.add_arguments(parser)
    assert nab.run(parser.parse_args([str(data / "catB" / "calm.csv"), "--out", str(out)])) == 0
    capsys.readouterr()
    assert nab.evaluate_results(out, labels, data) == 0
    assert "(1 of the 2 labelled series, alarm column)" in capsys.readouterr().out


def test_nab_input_errors(tmp_path: Path) -> None:
    data, _labels, _ = _two_series(tmp_path)
    parser = argparse.ArgumentParser()
    nab.add_arguments(parser)
    with pytest.raises(WearwatchError, match="no such file or folder"):
        nab.run(parser.parse_args([str(data / "nope"), "--out", str(tmp_path / "r")]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(WearwatchError, match="no CSV files"):
        nab.run(parser.parse_args([str(tmp_path / "empty"), "--out", str(tmp_path / "r")]))
    with pytest.raises(WearwatchError, match="cannot read labels"):
        nab.run(parser.parse_args([str(data), "--out", str(tmp_path / "r"), "--labels", str(tmp_path / "x.json")]))


def test_evaluate_results_rejects_missing_or_mismatched(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _write_csv(data / "c" / "f.csv", 100, None, 0)
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"c/f.csv": []}))
    with pytest.raises(WearwatchError):
        nab.evaluate_results(tmp_path / "nothing", labels, data)
    (tmp_path / "res" / "c").mkdir(parents=True)
    (tmp_path / "res" / "c" / "f.csv").write_text("timestamp,value,anomaly_score,alarm\n2024-01-01 00:00:00,1,0,0\n")
    with pytest.raises(WearwatchError):
        nab.evaluate_results(tmp_path / "res", labels, data)


@pytest.fixture(scope="module")
def nab_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The NAB series unpacked from the archive kept with the tests."""
    root = tmp_path_factory.mktemp("nab")
    with tarfile.open(NAB_ARCHIVE) as archive:
        archive.extractall(root, filter="data")
    return root


def test_the_nab_archive_holds_the_31_labelled_series(nab_dir: Path) -> None:
    labels = json.loads((nab_dir / "labels.json").read_text())
    assert len(labels) == 31
    files = sorted(p.relative_to(nab_dir / "data").as_posix() for p in (nab_dir / "data").rglob("*.csv"))
    assert files == sorted(labels)


def test_nab_on_a_real_subset(nab_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two real categories of NAB: only their series are run and scored."""
    parser = argparse.ArgumentParser()
    nab.add_arguments(parser)
    cats = [nab_dir / "data" / "realKnownCause", nab_dir / "data" / "artificialWithAnomaly"]
    expected = sorted(p.relative_to(nab_dir / "data").as_posix() for c in cats for p in c.glob("*.csv"))
    assert nab.run(parser.parse_args([*map(str, cats), "--out", str(tmp_path)])) == 0
    out = capsys.readouterr().out
    labels = json.loads((nab_dir / "labels.json").read_text())
    assert f"({len(expected)} of the {len(labels)} labelled series, alarm column)" in out
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.csv")) == expected


def test_nab_regression_on_the_31_series(nab_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """End to end on the real files (a few seconds): the fixed-threshold scores do not regress."""
    parser = argparse.ArgumentParser()
    nab.add_arguments(parser)
    assert nab.run(parser.parse_args([str(nab_dir / "data"), "--out", str(tmp_path)])) == 0
    lines = {ln.split()[0]: float(ln.split()[1]) for ln in capsys.readouterr().out.splitlines()
             if ln.split()[:1] and ln.split()[0] in PROFILES}
    assert lines["standard"] >= 74.5  # measured 75.1
    assert lines["reward_low_FP_rate"] >= 65.5  # 66.4
    assert lines["reward_low_FN_rate"] >= 80.0  # 80.5
