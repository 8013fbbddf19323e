"""The rule table: every rule compiles, the clinician's rendering is current and shows the settings."""

from __future__ import annotations

import dataclasses

import pytest

from detectors import CLINICAL_KINDS, DEVICE_KINDS, DetectorConfig
from detectors.rule_table import ALL_RULE_SETS, GLUCOSE_RULES
from detectors.rules import CompiledRules, Explain, Measure, Rule, RuleSet


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
