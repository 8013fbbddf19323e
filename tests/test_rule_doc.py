"""The rule table rendered for people (``wearwatch rules``, ``detectors/RULES.md``): current, with values."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from detectors import DetectorConfig
from detectors.rule_table import ALL_RULE_SETS, HEART_RATE_RULES
from tools.rules import add_arguments, default_holdoff, describe, markdown, run, text
from wearwatch.errors import WearwatchError

RULES_MD = Path(__file__).resolve().parents[1] / "detectors" / "RULES.md"


def test_rules_md_is_current() -> None:
    want = markdown(DetectorConfig(), default_holdoff()).rstrip("\n") + "\n"
    assert RULES_MD.read_text(encoding="utf-8") == want, (
        "detectors/RULES.md is stale: wearwatch rules --markdown --out detectors/RULES.md")


def test_text_and_markdown_show_every_rule_with_values() -> None:
    t = text(DetectorConfig(), default_holdoff())
    md = markdown(DetectorConfig(), default_holdoff())
    for rs in ALL_RULE_SETS:
        for r in rs.rules:
            assert r.kind in t and f"`{r.kind}" in md
    # thresholds are shown as values with units, not as setting names
    assert "glucose < 55 mg/dL" in t and "heart rate > 120 bpm and at rest" in t
    assert md.count("\n| `") == sum(len(rs.rules) for rs in ALL_RULE_SETS)
    assert "15 min: a new onset re-opens the same alert" in md


def test_describe_follows_per_patient_settings() -> None:
    cfg = DetectorConfig().with_overrides({"hr_rest_high_bpm": 130, "hr_rest_high_sustain_s": 300,
                                           "hr_news2_min_score": 0})
    tachy = describe(HEART_RATE_RULES.rules[1], cfg)
    assert tachy["opens"] == "heart rate > 130 bpm and at rest"
    assert tachy["for"] == "5 min (lapses up to 1 min do not restart the count)"
    assert tachy["priority"] == "MEDIUM; HIGH if heart rate ≥ 131 bpm at onset"
    assert "hr_rest_high_bpm" in tachy["settings"]
    assert describe(HEART_RATE_RULES.rules[2], cfg)["opens"].startswith("(off in this configuration)")


def test_cli_prints_the_table_for_overrides(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    p = argparse.ArgumentParser()
    add_arguments(p)
    assert run(p.parse_args(["--overrides", '{"glucose_low_mgdl": 75}'])) == 0
    out = capsys.readouterr().out
    assert "glucose < 75 mg/dL" in out and "glucose_urgent_low" in out
    dest = tmp_path / "rules.md"
    assert run(p.parse_args(["--markdown", "--out", str(dest)])) == 0
    assert dest.read_text(encoding="utf-8") == RULES_MD.read_text(encoding="utf-8")
    with pytest.raises(WearwatchError, match="unknown detector setting"):
        run(p.parse_args(["--overrides", '{"glucose_lo": 1}']))
