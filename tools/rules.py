"""The rule table for people: ``wearwatch rules`` and ``detectors/RULES.md``.

Renders :data:`detectors.rule_table.ALL_RULE_SETS` for a configuration: each rule's
kind, signal, priority, when it opens and for how long, when it clears, the alert
hold-off and the message, with every threshold shown as its value and unit (and
the setting that holds it, for per-patient overrides and tuning).

``detectors/RULES.md`` is the markdown rendering of the default configuration; a
unit test fails when it is stale. Regenerate it with::

    wearwatch rules --markdown --out detectors/RULES.md

Examples
--------
>>> from detectors.rule_table import GLUCOSE_RULES
>>> d = describe(GLUCOSE_RULES.rules[1], DetectorConfig())
>>> d["opens"], d["for"], d["clears"]
('glucose < 70 mg/dL', '15 min (lapses up to 6 min do not restart the count)', 'glucose ≥ 80 mg/dL, held for 10 min')
>>> describe(GLUCOSE_RULES.rules[1], DetectorConfig().with_overrides({"glucose_low_mgdl": 75}))["opens"]
'glucose < 75 mg/dL'
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import string
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import orjson

from alerts.lifecycle import DEFAULT_POLICY
from detectors.config import DetectorConfig
from detectors.rule_table import ALL_RULE_SETS
from detectors.rules import Rule, RuleSet
from tools.files import write_atomically
from wearwatch.errors import WearwatchError

__all__ = ["add_arguments", "describe", "markdown", "run", "text"]

_OPS = {ast.Lt: "<", ast.LtE: "≤", ast.Gt: ">", ast.GtE: "≥", ast.Eq: "=", ast.NotEq: "≠",
        ast.Add: "+", ast.Sub: "−", ast.Mult: "×", ast.Div: "/"}
#: minutes: how a hold-off of the alert lifecycle is looked up (priority value -> ms)
HoldOff = Callable[[str], int]


def _unit(setting: str) -> str:
    for suffix, unit in (("_mgdl_min", "mg/dL/min"), ("_mgdl", "mg/dL"), ("_bpm", "bpm"), ("_fraction", "×"),
                         ("_s", "s")):
        if setting.endswith(suffix):
            return unit
    return ""


def duration(seconds: float) -> str:
    """A duration as people say it.

    >>> duration(0), duration(40), duration(600), duration(90), duration(21600), duration(5400)
    ('at once', '40 s', '10 min', '1.5 min', '6 h', '90 min')
    """
    if seconds == 0:
        return "at once"
    if seconds < 60:
        return f"{seconds:g} s"
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    return f"{seconds / 60:g} min"


class _Text:
    """An expression of the table in words: settings as values with units, measures by name."""

    def __init__(self, config: DetectorConfig, measures: set[str]) -> None:
        self.settings = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
        self.measures = measures
        self.used: set[str] = set()

    def __call__(self, expr: str) -> str:
        return self._node(ast.parse(expr.strip(), mode="eval").body, top=True)

    def _const(self, node: ast.AST) -> tuple[float, str] | None:
        """The value and unit of an expression over settings and numbers only (None otherwise)."""
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
            return float(node.value), ""
        if isinstance(node, ast.Name) and node.id in self.settings and not isinstance(self.settings[node.id], bool):
            self.used.add(node.id)
            return float(self.settings[node.id]), _unit(node.id)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            inner = self._const(node.operand)
            return None if inner is None else (-inner[0], inner[1])
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            a, b = self._const(node.left), self._const(node.right)
            if a is None or b is None:
                return None
            value = {ast.Add: a[0] + b[0], ast.Sub: a[0] - b[0], ast.Mult: a[0] * b[0],
                     ast.Div: a[0] / b[0] if b[0] else float("nan")}[type(node.op)]
            return value, a[1] or b[1]
        return None

    def _node(self, node: ast.AST, top: bool = False) -> str:
        c = self._const(node)
        if c is not None:
            return duration(c[0]) if c[1] == "s" else f"{c[0]:g} {c[1]}".strip()
        if isinstance(node, ast.Name):
            if node.id in self.settings:  # a switch
                self.used.add(node.id)
                return f"{node.id} ({'on' if self.settings[node.id] else 'off'})"
            return node.id.removesuffix("_s").replace("_", " ")
        if isinstance(node, ast.Constant):
            return str(node.value)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            return f"{node.value.id} open"
        if isinstance(node, ast.BoolOp):
            word = " and " if isinstance(node.op, ast.And) else " or "
            text = word.join(self._node(v) for v in node.values)
            return text if top else f"({text})"
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return f"not {self._node(node.operand)}"
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return f"−{self._node(node.operand)}"
        if isinstance(node, ast.Compare):
            parts = [self._node(node.left)]
            for op, right in zip(node.ops, node.comparators, strict=True):
                parts += [_OPS[type(op)], self._node(right)]
            return " ".join(parts)
        if isinstance(node, ast.BinOp):
            return f"{self._node(node.left)} {_OPS[type(node.op)]} {self._node(node.right)}"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            args = [self._node(a, top=True) for a in node.args]
            if node.func.id == "abs":
                return f"|{args[0]}|"
            return f"{node.func.id}({', '.join(args)})"
        if isinstance(node, ast.IfExp):
            return f"{self._node(node.body)} if {self._node(node.test)} else {self._node(node.orelse)}"
        return ast.unparse(node)

    def seconds(self, value: str | float) -> str:
        if isinstance(value, str):
            self.used.add(value)
            return duration(float(self.settings[value]))
        return duration(float(value))

    def message(self, template: str) -> str:
        out = []
        for lit, name, spec, _conv in string.Formatter().parse(template):
            out.append(lit)
            if name is None:
                continue
            if name in self.settings:
                self.used.add(name)
                out.append(format(self.settings[name], spec or ""))
            elif name.endswith(("_min", "_h")) and name.rsplit("_", 1)[0] + "_s" in self.settings:
                base = name.rsplit("_", 1)[0] + "_s"
                self.used.add(base)
                out.append(format(self.settings[base] / (60 if name.endswith("_min") else 3600), spec or ""))
            elif name == "late_note":
                continue
            else:
                out.append(f"‹{name}›")
        return "".join(out)


def describe(rule: Rule, config: DetectorConfig, holdoff: HoldOff | None = None,
             measures: Iterable[str] = ()) -> dict[str, str]:
    """One rule in words: kind, signal, audience, priority, opens, for, clears, holdoff, message, settings, note."""
    t = _Text(config, set(measures))
    enabled = True
    if rule.enabled is not None:
        settings = t.settings
        enabled = bool(eval(compile(rule.enabled, "<enabled>", "eval"), {"__builtins__": {}}, dict(settings)))
        t(rule.enabled)
    priority = rule.priority.value.upper()
    for p, cond in rule.raised:
        priority += f"; {p.value.upper()} if {t(cond)} at onset"
    if rule.clear_priority is not None:
        priority += f" (clears as {rule.clear_priority.value.upper()})"
    if rule.cases:
        opens = "; ".join(
            f"{k.name}{' (' + t(k.when) + ')' if k.when else ''}: {t(k.opens_when)} for {t.seconds(k.sustain)}"
            for k in rule.cases)
        how_long = "see the cases"
    else:
        opens = t(rule.opens_when)
        how_long = t.seconds(rule.sustain)
    extras = []
    tolerate = rule.tolerate_s
    if (tolerate if not isinstance(tolerate, str) else t.settings[tolerate]) != 0:
        extras.append(f"lapses up to {t.seconds(tolerate)} do not restart the count")
    if rule.counts_from:
        extras.append("counted from the last reading before")
    if extras:
        how_long += f" ({'; '.join(extras)})"
    conditions = []
    if rule.requires:
        conditions.append(f"only while {t(rule.requires)}")
    if rule.watch_while:
        conditions.append(f"looked at while {t(rule.watch_while)}")
    if rule.opens_on_late:
        conditions.append("a late reading (re-sync) also opens it, unless an episode cleared after it")
    if rule.supersede is not None:
        s = rule.supersede
        conditions.append(f"opened '{s.after_case}': replaced once by a new episode when {t(s.when)} for "
                          f"{t.seconds(s.sustain)}")
    if conditions:
        opens += " — " + "; ".join(conditions)
    if not enabled:
        opens = "(off in this configuration) " + opens
    clear_for = rule.clear_for if not isinstance(rule.clear_for, str) else t.settings[rule.clear_for]
    clears = t(rule.clears_when) + (f", held for {t.seconds(rule.clear_for)}" if clear_for else " (at once)")
    hold = "—"
    if holdoff is not None:
        levels = {rule.priority, *(p for p, _ in rule.raised)}
        values = sorted({holdoff(p.value) for p in levels})
        hold = " / ".join(duration(v / 1000) for v in values) + ": a new onset re-opens the same alert"
    if rule.cases:
        message = " | ".join(dict.fromkeys(t.message(k.message) for k in rule.cases))
    else:
        message = t.message(rule.message)
    return {
        "kind": rule.kind, "signal": rule.signal, "audience": rule.audience.value, "source": rule.source,
        "priority": priority, "opens": opens, "for": how_long, "clears": clears, "holdoff": hold,
        "message": message, "clear_message": t.message(rule.clear_message),
        "settings": ", ".join(sorted(t.used)), "note": rule.note,
    }


def _rows(config: DetectorConfig, holdoff: HoldOff | None) -> list[tuple[RuleSet, dict[str, str]]]:
    return [(rs, describe(r, config, holdoff, (m.name for m in rs.measures)))
            for rs in ALL_RULE_SETS for r in rs.rules]


def text(config: DetectorConfig | None = None, holdoff: HoldOff | None = None) -> str:
    """The table as plain text, one block per rule."""
    out = []
    for _rs, d in _rows(config or DetectorConfig(), holdoff):
        out.append(f"{d['kind']}  [{d['signal']}, {d['audience']}, {d['source']}]  priority {d['priority']}")
        for label, key in (("opens when", "opens"), ("for how long", "for"), ("clears when", "clears"),
                           ("hold-off", "holdoff"), ("message", "message"), ("when cleared", "clear_message"),
                           ("settings", "settings")):
            out.append(f"  {label:<13} {d[key]}")
        out.append("")
    return "\n".join(out)


def _cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def markdown(config: DetectorConfig | None = None, holdoff: HoldOff | None = None) -> str:
    """The table as markdown (what ``detectors/RULES.md`` holds for the default configuration)."""
    cfg = config or DetectorConfig()
    rows = _rows(cfg, holdoff)
    lines = [
        "# Clinical rule table",
        "",
        "Generated from `detectors/rule_table.py` for the default settings by "
        "`wearwatch rules --markdown --out detectors/RULES.md` (`wearwatch rules` prints "
        "it for any settings); a unit test fails when this file is stale. Thresholds show their values; the "
        "settings column names the `DetectorConfig` fields that hold them (per-patient overrides: "
        "`WEARWATCH_ENROLLMENT_FILE`). ‹name› in a message is a value filled in when the alert is raised.",
        "",
        "An episode **opens** when its condition has held for the time given (brief lapses tolerated where said) "
        "and **clears** when the separate clear condition has held for its time (hysteresis). The **hold-off** "
        "belongs to the alert lifecycle: a new onset of the same kind within it after the alert resolved "
        "re-opens the same alert instead of raising a new one.",
        "",
        "| kind | signal | priority | opens when | for how long | clears when | hold-off | message | settings |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for _rs, d in rows:
        kind = f"`{d['kind']}`" + (" (device)" if d["audience"] == "device" else "") + (
            " (model)" if d["source"] == "model" else "")
        lines.append("| " + " | ".join(_cell(x) for x in (
            kind, d["signal"], d["priority"], d["opens"], d["for"], d["clears"], d["holdoff"],
            d["message"], d["settings"])) + " |")
    lines += ["", "## Why", ""]
    seen = set()
    for _rs, d in rows:
        if d["note"] and (d["kind"], d["note"]) not in seen:
            seen.add((d["kind"], d["note"]))
            lines.append(f"- `{d['kind']}`{' (' + d['signal'] + ')' if d['audience'] == 'device' else ''}: "
                         f"{d['note']}")
    lines += ["", "## What the rules read", "",
              "Each detector computes these measures from the readings (conditioning, trends, forecasts and "
              "per-patient baselines stay in the detectors); the rules compare them with the settings.", ""]
    shown: set[tuple[str, str]] = set()
    for rs in ALL_RULE_SETS:
        ms = [m for m in (*rs.measures, *rs.extras) if (rs.name.split("/")[0], m.name) not in shown]
        if not ms:
            continue
        lines.append(f"**{rs.name.split('/')[0]}**")
        lines.append("")
        for m in ms:
            shown.add((rs.name.split("/")[0], m.name))
            unit = f" ({m.unit})" if m.unit else ""
            lines.append(f"- `{m.name}`{unit}: {m.meaning}")
        lines.append("")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--markdown", action="store_true", help="markdown (as in detectors/RULES.md)")
    parser.add_argument("--overrides", metavar="JSON",
                        help='settings to show the rules with, e.g. \'{"glucose_low_mgdl": 75}\'')
    parser.add_argument("--out", metavar="FILE", help="write to FILE instead of stdout")


def default_holdoff() -> HoldOff:
    """The alert lifecycle's default hold-off per priority."""
    return DEFAULT_POLICY.holdoff_ms


def run(args: argparse.Namespace) -> int:
    cfg = DetectorConfig()
    if args.overrides:
        try:
            cfg = cfg.with_overrides(orjson.loads(args.overrides))
        except (orjson.JSONDecodeError, ValueError, TypeError) as exc:
            raise WearwatchError(f"--overrides: {exc}") from exc
    body = (markdown if args.markdown else text)(cfg, default_holdoff())
    if args.out:  # the rule table is documentation: the usual permissions, not owner-only
        write_atomically(Path(args.out), lambda f: f.write((body.rstrip("\n") + "\n").encode()), private=False)
    else:
        sys.stdout.write(body.rstrip("\n") + "\n")
    return 0
