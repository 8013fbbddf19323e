"""The rule table: every rule compiles, the clinician's rendering is current and shows the settings."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from detectors import CLINICAL_KINDS, DEVICE_KINDS, DetectorConfig
from detectors.rule_doc import add_arguments, default_holdoff, describe, markdown, run, text
from detectors.rule_table import ALL_RULE_SETS, GLUCOSE_RULES, HEART_RATE_RULES
from detectors.rules import CompiledRules, Explain, Measure, Rule, RuleSet

RULES_MD = Path(__file__).resolve().parent / "RULES.md"


def test_rules_md_is_current() -> None:
    want = markdown(DetectorConfig(), default_holdoff()).rstrip("\n") + "\n"
    assert RULES_MD.read_text(encoding="utf-8") == want, (
        "detectors/RULES.md is stale: .venv/bin/python -m detectors.rule_doc --markdown --out detectors/RULES.md")


def test_table_holds_every_kind_the_detectors_emit() -> None:
    kinds = {r.kind for rs in ALL_RULE_SETS for r in rs.rules}
    assert kinds == set(CLINICAL_KINDS) | set(DEVICE_KINDS)
    device = {(r.kind, r.signal) for rs in ALL_RULE_SETS for r in rs.rules if r.audience.value == "device"}
    assert device == {("sensor_stale", s) for s in ("heart_rate", "glucose", "steps")} | {
        ("value_implausible", s) for s in ("heart_rate", "glucose", "steps")} | {
        ("sensor_flatline", s) for s in ("heart_rate", "glucose")}


def test_every_rule_compiles_and_names_only_known_settings() -> None:
    settings = {f.name for f in dataclasses.fields(DetectorConfig)}
    for rs in ALL_RULE_SETS:
        comp = rs.compiled(DetectorConfig())
        assert isinstance(comp, CompiledRules) and "def step(" in comp.source
        for r in rs.rules:
            for value in (r.sustain, r.clear_for, r.tolerate_s, *(k.sustain for k in r.cases)):
                assert not isinstance(value, str) or value in settings, (r.kind, value)


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
    from wearwatch.errors import WearwatchError

    with pytest.raises(WearwatchError, match="unknown detector setting"):
        run(p.parse_args(["--overrides", '{"glucose_lo": 1}']))


def _one_rule(**kw: object) -> RuleSet:
    fields: dict[str, object] = {
        "kind": "x_low", "signal": "glucose", "priority": GLUCOSE_RULES.rules[1].priority,
        "opens_when": "x < glucose_low_mgdl", "sustain": 0.0, "clears_when": "x > glucose_low_mgdl",
        "clear_for": 0.0, "message": "low {x}", "explain": Explain(value="x"), "clear_message": "ok",
        "clear_explain": Explain(),
    }
    fields.update(kw)
    return RuleSet("t", (Measure("x", "", "a value"),), (Rule(**fields),))  # type: ignore[arg-type]


@pytest.mark.parametrize(("kw", "error"), [
    ({"opens_when": "x < glucose_lo"}, "unknown name 'glucose_lo'"),
    ({"opens_when": "__import__('os')"}, "only round, max, min, abs, float, exp may be called"),
    ({"opens_when": "x.real < 1"}, "only '<kind>.open'"),
    ({"opens_when": "[x][0] < 1"}, "not allowed"),
    ({"message": "low {y}"}, "unknown value 'y'"),
    ({"explain": Explain(value="y")}, "unknown name 'y'"),
])
def test_bad_rules_are_refused_with_the_rule_named(kw: dict[str, object], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        _one_rule(**kw).compiled(DetectorConfig())


def test_compiled_once_per_configuration() -> None:
    cfg = DetectorConfig()
    a = GLUCOSE_RULES.compiled(cfg)
    assert GLUCOSE_RULES.compiled(cfg) is a
    assert GLUCOSE_RULES.compiled(DetectorConfig()) is a  # an equal config shares the compiled table
    other = GLUCOSE_RULES.compiled(cfg.with_overrides({"glucose_low_mgdl": 75}))
    assert other is not a and "75.0" in other.source and "75.0" not in a.source
