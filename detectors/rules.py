"""Clinical rules as data, and the one engine that steps through them.

A :class:`Rule` says, in the words of a clinical protocol, when an episode of one
kind *opens* (a condition held for a sustain time, brief lapses tolerated), when it
*clears* (a separate, stricter condition held for a while: hysteresis), its
priority and audience, and the messages and explanation a nurse gets. Conditions
are short Python expressions over two kinds of names:

* **measures** - what a detector computes from the readings at each step
  (``glucose``, ``trend``, ``forecast``, ``heart_rate``, ``at_rest``, ...), declared
  with their unit and meaning in the detector's :class:`RuleSet`;
* **settings** - the thresholds of :class:`~detectors.config.DetectorConfig`
  (``glucose_low_mgdl``), so a per-patient override or a tuning script changes a
  rule by changing a setting, never code.

``kind.open`` (e.g. ``glucose_urgent_low.open``) asks whether another rule of the
same detector has an episode open. The detectors keep what is not a threshold
rule - conditioning, trends and forecasts, per-patient baselines - and hand the
engine their measures; the tables live in :mod:`detectors.rule_table`.

A rule set is validated and its expressions compiled once (:meth:`RuleSet.compiled`);
per configuration - cached by the values of the settings the table reads
(:meth:`RuleSet.settings_used`), a few kB each - only the times and one generated
``step`` function are made, with the settings as constants and every idle rule's
tests inlined, so a reading that opens nothing costs about what hand-written code
costs. The engine keeps no state: it advances the detector's episodes
(:class:`~detectors.episodes.Sustained`, so the pickled patient state keeps its
layout). For each rule, in table order:

1. skipped if its ``requires`` measure condition is false (e.g. no trend yet);
2. while idle (no episode pending or open) skipped unless ``watch_while`` holds;
3. an open episode armed for *superseding* (see :class:`Supersede`) is checked;
4. the first :class:`Case` whose ``when`` holds gives the open condition and the
   sustain time (most rules have one case);
5. idle or pending: the open condition starts or continues the count; once it has
   held for the sustain time (lapses up to ``tolerate_s`` do not restart it) the
   episode opens, with the priority of the first ``raised`` tier that holds;
6. open: the clear condition starts or continues the clear count; once it has held
   for ``clear_for`` the episode clears (with the priority it opened with unless
   ``clear_priority`` says otherwise); any reading that does not meet it restarts
   the clear count.

Examples
--------
>>> from detectors.config import DetectorConfig
>>> from detectors.episodes import Sustained
>>> low = Rule(
...     kind="glucose_low", signal="glucose", priority=Priority.MEDIUM,
...     opens_when="glucose < glucose_low_mgdl", sustain="glucose_low_sustain_s",
...     clears_when="glucose >= glucose_low_clear_mgdl", clear_for="glucose_clear_s",
...     message="Low glucose: {glucose:.0f} mg/dL for {sustained_min:.0f} min",
...     explain=Explain(value="glucose", threshold="glucose_low_mgdl"),
...     clear_message="Low glucose resolved: {glucose:.0f} mg/dL",
...     clear_explain=Explain(value="glucose", threshold="glucose_low_clear_mgdl"))
>>> rules = RuleSet("glucose", (Measure("glucose", "mg/dL", "the reading"),), (low,))
>>> engine = rules.compiled(DetectorConfig())
>>> episodes, out = [Sustained()], []
>>> for minute, mgdl in [(0, 65.0), (5, 62.0), (10, 60.0), (15, 61.0), (20, 85.0), (30, 90.0)]:
...     engine.step(minute * 60_000, (mgdl,), episodes, out)
>>> [(f.message, f.cleared, f.onset_ms) for f in out]
[('Low glucose: 61 mg/dL for 15 min', False, 0), ('Low glucose resolved: 90 mg/dL', True, 0)]
"""

from __future__ import annotations

import ast
import dataclasses
import math
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from detectors.base import Audience, Finding, Priority
from detectors.config import DetectorConfig
from detectors.episodes import IDLE, EpisodeStarts, Sustained, is_shared_idle

__all__ = [
    "ENGINE_VALUES",
    "Case",
    "CompiledRules",
    "Explain",
    "Measure",
    "MessageValues",
    "Rule",
    "RuleSet",
    "Supersede",
]

#: values the engine puts beside the measures and settings for messages and explanations
ENGINE_VALUES: dict[str, str] = {
    "sustained_s": "seconds from the episode's onset to now",
    "sustained_min": "minutes from the episode's onset to now",
    "sustained_h": "hours from the episode's onset to now",
    "clearing_min": "minutes the clear condition has held (when an episode clears)",
    "open_before_clearing_min": "minutes from the onset until the clear condition began to hold",
    "peak": "the highest value of the rule's tracked measure while the episode was pending or open",
    "late_note": "' (late reading after re-sync)' when a late reading opened the episode, else ''",
}

_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "round": round, "max": max, "min": min, "abs": abs, "float": float, "exp": math.exp}
_ALLOWED = (
    ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub, ast.BinOp, ast.Add, ast.Sub,
    ast.Mult, ast.Div, ast.Compare, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Eq, ast.NotEq, ast.Name, ast.Load,
    ast.Constant, ast.Attribute, ast.Call, ast.IfExp,
)


class MessageValues(Protocol):
    """What a detector passes to :meth:`CompiledRules.step` as ``extra``: the values of its rule set's
    ``extras``, computed only when a message is written."""

    def message_values(self) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class Measure:
    """A quantity a detector computes for its rules: name, unit (may be empty) and meaning."""

    name: str
    unit: str
    meaning: str


@dataclass(frozen=True, slots=True)
class Explain:
    """The explanation fields of a finding, each an expression (or None: not given).

    ``contributing`` is a tuple of signals, or the name of a measure holding one;
    None means the rule's own signal.
    """

    value: str | None = None
    threshold: str | None = None
    window_s: str | None = None
    baseline: str | None = None
    trend_per_min: str | None = None
    contributing: tuple[str, ...] | str | None = None


@dataclass(frozen=True, slots=True)
class Case:
    """One way an episode can open: used while ``when`` holds (None: otherwise).

    Cases of one rule share its episode (one sustain count); the case that holds at
    the opening step gives the message and explanation.
    """

    name: str
    when: str | None
    opens_when: str
    sustain: str | float
    message: str
    explain: Explain


@dataclass(frozen=True, slots=True)
class Supersede:
    """An open episode that opened on case ``after_case`` is replaced by a new one (once) when
    ``when`` has held for ``sustain``: the old one clears, the new one opens at the time the
    condition began, so an alert about a milder state cannot hide a worse one."""

    after_case: str
    when: str
    sustain: str | float
    clear_message: str
    clear_explain: Explain
    message: str
    explain: Explain


@dataclass(frozen=True, slots=True)
class Rule:
    """One threshold / sustain / clear rule (see the module docs for how the engine applies it)."""

    kind: str
    signal: str
    priority: Priority
    opens_when: str
    sustain: str | float
    clears_when: str
    clear_for: str | float
    message: str
    explain: Explain
    clear_message: str
    clear_explain: Explain
    audience: Audience = Audience.CLINICAL
    source: str = "rule"
    #: higher priorities at onset: the first ``(priority, condition)`` that holds
    raised: tuple[tuple[Priority, str], ...] = ()
    #: priority of the clearing finding; None: the one the episode opened with
    clear_priority: Priority | None = None
    #: a lapse of the open condition up to this long does not restart the sustain count
    tolerate_s: str | float = 0.0
    #: the rule is stepped only when this holds (open episodes too)
    requires: str | None = None
    #: an idle rule (nothing pending or open) is looked at only while this holds
    watch_while: str | None = None
    #: a condition on settings only; False turns the rule off
    enabled: str | None = None
    #: the sustain count starts at this measure (a time in ms) instead of the current reading
    counts_from: str | None = None
    #: ``peak`` holds this measure's highest value while the episode is pending or open
    track_peak: str | None = None
    #: a late reading meeting the open condition opens the episode, unless one cleared after it
    opens_on_late: bool = False
    #: several ways to open (the first whose ``when`` holds); empty: ``opens_when``/``sustain``
    cases: tuple[Case, ...] = ()
    supersede: Supersede | None = None
    #: why the rule is as it is, for the people reading the table
    note: str = ""

    def all_cases(self) -> tuple[Case, ...]:
        """The cases, or the rule's own open condition as the only one."""
        if self.cases:
            return self.cases
        return (Case("", None, self.opens_when, self.sustain, self.message, self.explain),)


@dataclass(frozen=True)
class RuleSet:
    """The rules of one detector, in the order they are stepped, and the measures they read.

    ``extras`` are values a detector computes only when a message is written
    (its ``message_values()``, see :class:`MessageValues`).
    """

    name: str
    measures: tuple[Measure, ...]
    rules: tuple[Rule, ...]
    extras: tuple[Measure, ...] = ()
    _by_id: dict[int, tuple[DetectorConfig, CompiledRules]] = field(
        default_factory=dict, repr=False, compare=False, hash=False)
    _by_values: dict[tuple[Any, ...], CompiledRules] = field(
        default_factory=dict, repr=False, compare=False, hash=False)
    _shared: list[_Shared] = field(default_factory=list, repr=False, compare=False, hash=False)

    def shared(self) -> _Shared:
        """What is compiled once for every configuration (made on first use)."""
        if not self._shared:
            self._shared.append(_Shared(self))
        return self._shared[0]

    def settings_used(self) -> tuple[str, ...]:
        """The :class:`~detectors.config.DetectorConfig` settings this table reads (conditions, times,
        messages, explanations): what a per-patient override or a tuning script can vary."""
        return self.shared().settings

    def compiled(self, config: DetectorConfig) -> CompiledRules:
        """The rules compiled for ``config``.

        Cached per configuration object and per values of :meth:`settings_used`: patients whose
        overrides touch other tables share this one (a compiled table is a few kB).
        """
        return self.bound(config)[1]

    def bound(self, config: DetectorConfig) -> tuple[DetectorConfig, CompiledRules]:
        """``(config, self.compiled(config))``: one tuple per configuration object, which every detector
        holding that configuration shares (a detector keeps it to tell whether its config changed)."""
        hit = self._by_id.get(id(config))
        if hit is not None and hit[0] is config:
            return hit
        shared = self.shared()
        key = tuple(getattr(config, n) for n in shared.settings)
        comp = self._by_values.get(key)
        if comp is None:
            if len(self._by_values) >= 4096:
                self._by_values.clear()
            comp = self._by_values[key] = CompiledRules(self, config)
        if len(self._by_id) >= 8192:
            self._by_id.clear()
        hit = self._by_id[id(config)] = (config, comp)  # the config is held: its id is not reused meanwhile
        return hit

    def index(self, kind: str) -> int:
        """Position of the rule of ``kind`` (the episode list is in this order)."""
        return next(i for i, r in enumerate(self.rules) if r.kind == kind)


# --- compiling expressions ------------------------------------------------------------------------

def _settings(config: DetectorConfig) -> dict[str, Any]:
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


def _message_settings(config: DetectorConfig) -> dict[str, Any]:
    """Settings for messages: each duration ``*_s`` also as ``*_min`` and ``*_h``."""
    out = _settings(config)
    for name, v in list(out.items()):
        if name.endswith("_s") and isinstance(v, float):
            out.setdefault(name[:-2] + "_min", v / 60)
            out.setdefault(name[:-2] + "_h", v / 3600)
    return out


class _Resolve(ast.NodeTransformer):
    """Names of a rule expression -> Python: measures, settings, values of a message, ``kind.open``.

    Measures become ``m[i]`` (or the locals ``m_<name>`` of the generated step); settings the
    constants of ``constants`` when given (the generated step), else ``s[k]``, a slot of the
    per-configuration settings tuple (k given on first use); in ``cold`` mode (messages and
    explanations, evaluated when a finding is made) every name is looked up in the namespace
    ``v``. Each setting read is recorded in ``used``.
    """

    def __init__(self, measures: dict[str, int], settings: set[str], kinds: dict[str, int]) -> None:
        self.measures, self.settings, self.kinds = measures, settings, kinds
        self.text = ""
        self.local = False
        self.constants: dict[str, Any] | None = None
        self.cold: set[str] | None = None
        self.slots: dict[str, int] = {}
        self.used: set[str] = set()

    def generic_visit(self, node: ast.AST) -> ast.AST:
        if not isinstance(node, _ALLOWED):
            raise ValueError(f"{self.text!r}: {type(node).__name__} is not allowed in a rule expression")
        return super().generic_visit(node)

    def visit_Call(self, node: ast.Call) -> ast.AST:
        if not (isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS) or node.keywords:
            raise ValueError(f"{self.text!r}: only {', '.join(_FUNCTIONS)} may be called")
        node.args = [self.visit(a) for a in node.args]
        return node

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        if not (isinstance(node.value, ast.Name) and node.value.id in self.kinds and node.attr == "open"):
            raise ValueError(f"{self.text!r}: only '<kind>.open' of a rule of the same detector may be used")
        ep = ast.Subscript(ast.Name("e", ast.Load()), ast.Constant(self.kinds[node.value.id]), ast.Load())
        return ast.Compare(ast.Attribute(ep, "onset_ms", ast.Load()), [ast.GtE()], [ast.Constant(0)])

    def setting(self, name: str) -> str:
        """Record a setting read (a message's ``x_min``/``x_h`` reads ``x_s``); returns its name."""
        base = _duration_base(name, self.settings)
        self.used.add(base)
        return base

    def visit_Name(self, node: ast.Name) -> ast.AST:
        name = node.id
        if self.cold is not None:
            if name not in self.cold:
                raise ValueError(f"{self.text!r}: unknown name {name!r} (not a measure, setting or engine value)")
            if name not in self.measures and _duration_base(name, self.settings) in self.settings:
                self.setting(name)
            return ast.Subscript(ast.Name("v", ast.Load()), ast.Constant(name), ast.Load())
        if name in self.measures:
            if self.local:
                return ast.Name(f"m_{name}", ast.Load())
            return ast.Subscript(ast.Name("m", ast.Load()), ast.Constant(self.measures[name]), ast.Load())
        if name in self.settings:
            self.setting(name)
            if self.constants is not None:
                return ast.Constant(self.constants[name])
            k = self.slots.setdefault(name, len(self.slots))
            return ast.Subscript(ast.Name("s", ast.Load()), ast.Constant(k), ast.Load())
        raise ValueError(f"{self.text!r}: unknown name {name!r} (not a measure, setting or engine value)")


def _duration_base(name: str, settings: set[str]) -> str:
    """``glucose_clear_min`` -> ``glucose_clear_s`` when that is a setting (messages show durations so)."""
    for suffix in ("_min", "_h"):
        if name.endswith(suffix) and name[: -len(suffix)] + "_s" in settings:
            return name[: -len(suffix)] + "_s"
    return name


def _compile(text: str, args: str, resolve: _Resolve) -> Callable[..., Any]:
    resolve.text = text
    tree = ast.parse(text.strip(), mode="eval")
    body = resolve.visit(tree.body)
    lam = ast.Expression(ast.Lambda(
        ast.arguments(posonlyargs=[], args=[ast.arg(a) for a in args.split(",")], kwonlyargs=[], kw_defaults=[],
                      defaults=[]), body))
    ast.fix_missing_locations(lam)
    fn: Callable[..., Any] = eval(compile(lam, f"<rule: {text}>", "eval"), {"__builtins__": {}, **_FUNCTIONS})
    return fn


def _check_template(text: str, names: set[str], where: str) -> None:
    for _lit, name, _spec, _conv in string.Formatter().parse(text):
        if name is not None and name not in names:
            raise ValueError(f"{where}: message {text!r} uses unknown value {name!r}")


def _seconds(value: str | float, config: DetectorConfig) -> float:
    return float(getattr(config, value)) if isinstance(value, str) else float(value)


class _Message:
    """A message template and its explanation, ready to render."""

    __slots__ = ("baseline", "contributing", "template", "threshold", "trend", "value", "window")

    def __init__(self, template: str, explain: Explain, names: set[str], resolve: _Resolve, where: str) -> None:
        _check_template(template, names, where)
        for _lit, name, _spec, _conv in string.Formatter().parse(template):
            if name is not None and name not in resolve.measures and \
                    _duration_base(name, resolve.settings) in resolve.settings:
                resolve.setting(name)
        self.template = template

        def fn(expr: str | None) -> Callable[[dict[str, Any]], Any] | None:
            return None if expr is None else _compile(expr, "v", resolve)

        self.value, self.threshold, self.window = fn(explain.value), fn(explain.threshold), fn(explain.window_s)
        self.baseline, self.trend = fn(explain.baseline), fn(explain.trend_per_min)
        c = explain.contributing
        if isinstance(c, str) and c not in names:
            raise ValueError(f"{where}: contributing names unknown value {c!r}")
        self.contributing = c


class _SharedRule:
    """One rule compiled for every configuration: conditions are ``fn(m, e, s)``."""

    __slots__ = (
        "case_messages", "case_names", "case_on", "case_when", "clear_message", "counts_from", "enabled", "index",
        "off", "peak", "raised", "requires", "rule", "sup_clear", "sup_message", "sup_when", "watch",
    )

    def __init__(self, rule: Rule, index: int, cond: Callable[[str], Callable[..., Any]],
                 message: Callable[[str, Explain, str], _Message], measures: dict[str, int]) -> None:
        where = f"rule {rule.kind}/{rule.signal}"
        self.rule, self.index = rule, index
        self.enabled = cond(rule.enabled) if rule.enabled is not None else None
        self.requires = cond(rule.requires) if rule.requires else None
        self.watch = cond(rule.watch_while) if rule.watch_while else None
        self.off = cond(rule.clears_when)
        self.raised = tuple((p, cond(t)) for p, t in rule.raised)
        for name in (rule.counts_from, rule.track_peak):
            if name is not None and name not in measures:
                raise ValueError(f"{where}: {name!r} is not a measure")
        self.counts_from = measures[rule.counts_from] if rule.counts_from else -1
        self.peak = measures[rule.track_peak] if rule.track_peak else -1
        cases = rule.all_cases()
        self.case_names = tuple(k.name for k in cases)
        self.case_when = tuple(cond(k.when) if k.when else None for k in cases)
        self.case_on = tuple(cond(k.opens_when) for k in cases)
        self.case_messages = tuple(message(k.message, k.explain, where) for k in cases)
        self.clear_message = message(rule.clear_message, rule.clear_explain, where)
        sup = rule.supersede
        self.sup_when: Callable[..., bool] | None = None
        if sup is not None:
            if sup.after_case not in self.case_names:
                raise ValueError(f"{where}: supersede after unknown case {sup.after_case!r}")
            self.sup_when = cond(sup.when)
            self.sup_clear = message(sup.clear_message, sup.clear_explain, where)
            self.sup_message = message(sup.message, sup.explain, where)


class _Shared:
    """A :class:`RuleSet` compiled once: validated, its conditions, messages and the settings it reads."""

    def __init__(self, ruleset: RuleSet) -> None:
        default = DetectorConfig()
        settings = {f.name for f in dataclasses.fields(default)}
        self.measures = {m.name: i for i, m in enumerate(ruleset.measures)}
        kinds = {r.kind: i for i, r in enumerate(ruleset.rules)}
        self.kinds = kinds
        self.names = (set(self.measures) | set(_message_settings(default)) | set(ENGINE_VALUES)
                      | {m.name for m in ruleset.extras})
        hot = _Resolve(self.measures, settings, kinds)
        cold = _Resolve(self.measures, settings, kinds)
        cold.cold = self.names

        def cond(text: str) -> Callable[..., Any]:
            return _compile(text, "m,e,s", hot)

        def message(template: str, explain: Explain, where: str) -> _Message:
            cold.text = template
            return _Message(template, explain, self.names, cold, where)

        self.rules = tuple(_SharedRule(r, i, cond, message, self.measures) for i, r in enumerate(ruleset.rules))
        for r in ruleset.rules:
            for value in (r.sustain, r.clear_for, r.tolerate_s, *(k.sustain for k in r.cases),
                          *((r.supersede.sustain,) if r.supersede else ())):
                if isinstance(value, str):
                    if value not in settings:
                        raise ValueError(f"rule {r.kind}/{r.signal}: unknown setting {value!r}")
                    hot.used.add(value)
        #: the settings read anywhere in the table (sorted), and the slots of the conditions' ``s``
        self.settings = tuple(sorted(hot.used | cold.used))
        self.slots = tuple(sorted(hot.slots, key=hot.slots.__getitem__))
        self.resolver = hot


class _Case:
    __slots__ = ("message", "name", "on", "sustain_ms", "when")

    def __init__(self, name: str, when: Callable[..., bool] | None, on: Callable[..., bool], sustain_ms: float,
                 message: _Message) -> None:
        self.name, self.when, self.on, self.sustain_ms, self.message = name, when, on, sustain_ms, message


class _Compiled:
    """One rule for one configuration: the shared conditions and this configuration's times."""

    __slots__ = (
        "audience", "cases", "clear_message", "clear_ms", "clear_priority", "counts_from", "index", "kind", "off",
        "one_case", "opens_on_late", "peak", "priority", "raised", "requires", "rule", "signal", "source",
        "sup_case", "sup_clear", "sup_message", "sup_ms", "sup_when", "tolerate_ms", "watch",
    )
    audience: Audience
    cases: tuple[_Case, ...]
    clear_message: _Message
    clear_ms: float
    clear_priority: Priority | None
    counts_from: int
    index: int
    kind: str
    off: Callable[..., bool]
    one_case: _Case | None
    opens_on_late: bool
    peak: int
    priority: Priority
    raised: tuple[tuple[Priority, Callable[..., bool]], ...]
    requires: Callable[..., bool] | None
    rule: Rule
    signal: str
    source: str
    sup_case: str | None
    sup_clear: _Message
    sup_message: _Message
    sup_ms: float
    sup_when: Callable[..., bool] | None
    tolerate_ms: float
    watch: Callable[..., bool] | None


def _nan_none(x: Any) -> Any:
    return None if isinstance(x, float) and x != x else x


class CompiledRules:
    """A :class:`RuleSet` compiled for one :class:`~detectors.config.DetectorConfig`.

    Stateless: the episodes (one :class:`~detectors.episodes.Sustained` per rule, in
    table order) belong to the detector and are passed to :meth:`step`.
    """

    def __init__(self, ruleset: RuleSet, config: DetectorConfig) -> None:
        self.ruleset = ruleset
        #: the configuration this was compiled from (others with the same values of the settings
        #: the table reads share it)
        self.config = config
        shared = ruleset.shared()
        self._measure_names = tuple(m.name for m in ruleset.measures)
        self._base_ns: dict[str, Any] | None = None
        #: this configuration's values of the settings the shared conditions read (their ``s``)
        self.s = tuple(getattr(config, n) for n in shared.slots)
        compiled: list[_Compiled] = []
        for sr in shared.rules:
            rule = sr.rule
            if sr.enabled is not None and not sr.enabled(None, None, self.s):
                continue
            c = _Compiled()
            c.rule, c.index, c.kind, c.signal = rule, sr.index, rule.kind, rule.signal
            c.audience, c.source, c.priority, c.clear_priority = (
                rule.audience, rule.source, rule.priority, rule.clear_priority)
            c.requires, c.watch, c.off, c.raised = sr.requires, sr.watch, sr.off, sr.raised
            c.clear_ms = _seconds(rule.clear_for, config) * 1000
            c.tolerate_ms = _seconds(rule.tolerate_s, config) * 1000
            c.counts_from, c.peak, c.opens_on_late = sr.counts_from, sr.peak, rule.opens_on_late
            c.cases = tuple(
                _Case(name, when, on, _seconds(k.sustain, config) * 1000, msg)
                for name, when, on, k, msg in zip(sr.case_names, sr.case_when, sr.case_on, rule.all_cases(),
                                                  sr.case_messages, strict=True)
            )
            c.one_case = c.cases[0] if len(c.cases) == 1 else None
            c.clear_message = sr.clear_message
            sup = rule.supersede
            c.sup_case = sup.after_case if sup else None
            c.sup_when = sr.sup_when
            if sup is not None:
                c.sup_ms = _seconds(sup.sustain, config) * 1000
                c.sup_clear, c.sup_message = sr.sup_clear, sr.sup_message
            compiled.append(c)
        self._rules = tuple(compiled)
        self._late = tuple(c for c in compiled if c.opens_on_late)
        #: the generated source of :meth:`step` (for reading and debugging)
        self.source = ""
        self.step = self._generate(shared)

    # -- stepping -----------------------------------------------------------------------------------
    # ``step`` is generated per rule set and configuration (see _generate): for each rule the
    # requires / watch / open tests of an idle episode are inlined, so a reading that opens
    # nothing costs what hand-written code costs; pending and open episodes go through _busy.
    step: Callable[..., None]
    step_values: Callable[..., None]

    def _step_doc(
        self, ts: int, m: Sequence[Any], eps: list[Sustained], out: list[Finding],
        extra: MessageValues | None = None,
    ) -> None:
        """Advance every rule with the measures ``m`` (in the rule set's order) at ``ts`` (epoch ms).

        New findings are appended to ``out``; ``extra.message_values()`` supplies the
        rule set's ``extras`` when a message is written (the detector passes itself: no
        callable is made per reading).
        """

    def _generate(self, shared: _Shared) -> Callable[..., None]:
        names = ", ".join(f"m_{n}" for n in self._measure_names)
        tuple_of = f"({names},)" if names else "()"
        lines = [f"def step_values(ts, e, out, extra{', ' + names if names else ''}):"]
        gen = _Resolve(shared.measures, shared.resolver.settings, shared.kinds)
        gen.local = True
        gen.constants = {n: getattr(self.config, n) for n in shared.settings}

        def src(text: str) -> str:
            gen.text = text
            return ast.unparse(gen.visit(ast.parse(text.strip(), mode="eval").body))

        for k, c in enumerate(self._rules):
            rule = c.rule
            pad = "    "
            lines.append(f"    ep = e[{c.index}]  # {rule.kind} / {rule.signal}")
            if rule.requires:
                lines.append(f"    if {src(rule.requires)}:")
                pad += "    "
            idle = [f"({src(rule.watch_while)})"] if rule.watch_while else []
            if c.one_case is not None:
                idle.append(f"({src(c.rule.all_cases()[0].opens_when)})")
            # the measures go into a tuple only on these (rare) paths
            lines.append(f"{pad}if ep.since < 0:")
            lines.append(f"{pad}    if {' and '.join(idle) or 'True'}:")
            lines.append(f"{pad}        idle(r{k}, ep, ts, {tuple_of}, e, out, extra)")
            lines.append(f"{pad}else:")
            lines.append(f"{pad}    busy(r{k}, ep, ts, {tuple_of}, e, out, extra)")
        lines.append("")
        lines.append("def step(ts, m, e, out, extra=None):")
        lines.append("    step_values(ts, e, out, extra, *m)")
        namespace: dict[str, Any] = {"__builtins__": {}, **_FUNCTIONS, "idle": self._idle, "busy": self._busy}
        namespace.update({f"r{k}": c for k, c in enumerate(self._rules)})
        self.source = "\n".join(lines) + "\n"
        exec(compile(self.source, f"<rules {self.ruleset.name}>", "exec"), namespace)
        fn: Callable[..., None] = namespace["step"]
        fn.__doc__ = self._step_doc.__doc__
        self.step_values = namespace["step_values"]
        self.step_values.__doc__ = (
            "The same as :meth:`step` with the measures as the last arguments, in the rule set's order "
            "(what the detectors call on every reading: no tuple is made unless an episode is busy).")
        return fn

    def _idle(self, c: _Compiled, ep: Sustained, ts: int, m: Sequence[Any], eps: list[Sustained],
              out: list[Finding], extra: MessageValues | None) -> None:
        """An idle episode whose watch (and, for one case, open) condition holds: start the count."""
        case = c.one_case or self._case(c, m, eps)
        if c.one_case is None and not case.on(m, eps, self.s):
            return
        if ep is IDLE:  # the shared not-started episode: the detector gets its own
            if is_shared_idle(eps):  # nothing changed so far: the detector owns a list and steps again
                raise EpisodeStarts
            ep = eps[c.index] = Sustained()
        if c.peak >= 0:
            ep.peak = 0.0
        ep.since = since = m[c.counts_from] if c.counts_from >= 0 else ts
        ep.false_since = -1
        if ts - since >= case.sustain_ms:
            self._open(c, case, ep, ts, m, eps, out, extra)
        elif c.peak >= 0:
            self._track(c, ep, m)

    def _busy(self, c: _Compiled, ep: Sustained, ts: int, m: Sequence[Any], eps: list[Sustained],
              out: list[Finding], extra: MessageValues | None) -> None:
        """A pending or open episode."""
        if ep.onset_ms < 0:  # pending
            case = c.one_case or self._case(c, m, eps)
            if case.on(m, eps, self.s):
                ep.false_since = -1
                if ts - ep.since >= case.sustain_ms:
                    self._open(c, case, ep, ts, m, eps, out, extra)
                    return
            else:
                if ep.false_since < 0:
                    ep.false_since = ts
                if ts - ep.false_since >= c.tolerate_ms:
                    ep.since = -1
                    ep.false_since = -1
            if c.peak >= 0 and ep.since >= 0:
                self._track(c, ep, m)
            return
        if c.sup_case is not None and ep.armed and self._superseded(c, ep, ts, m, eps, out, extra):
            return
        if c.off(m, eps, self.s):
            if ep.clear_since < 0:
                ep.clear_since = ts
            if ts - ep.clear_since >= c.clear_ms:
                self._clear(c, ep, ts, m, eps, out, extra)
        else:
            ep.clear_since = -1
        if c.peak >= 0:
            self._track(c, ep, m)

    def open_late(
        self, ts: int, m: Sequence[Any], eps: list[Sustained], out: list[Finding],
        extra: MessageValues | None = None,
    ) -> None:
        """A late reading (older than the newest one): rules that open on late readings may open.

        Such a rule opens, with its onset at ``ts``, if the open condition of its case holds,
        no episode is open and none cleared after ``ts``.
        """
        for c in self._late:
            ep = eps[c.index]
            case = c.one_case or self._case(c, m, eps)
            if ep.onset_ms < 0 and ts > ep.closed_ms and case.on(m, eps, self.s):
                if ep is IDLE:
                    if is_shared_idle(eps):  # nothing changed so far (see _idle)
                        raise EpisodeStarts
                    ep = eps[c.index] = Sustained()
                ep.onset_ms = ep.since = ts
                ep.clear_since = -1
                ep.level = c.priority
                out.append(self._finding(c, case.message, ep, ts, ts, c.priority, m, extra, late=True))

    # -- internals ------------------------------------------------------------------------------------
    def _case(self, c: _Compiled, m: Sequence[Any], eps: list[Sustained]) -> _Case:
        for case in c.cases:
            if case.when is None or case.when(m, eps, self.s):
                return case
        return c.cases[-1]

    @staticmethod
    def _track(c: _Compiled, ep: Sustained, m: Sequence[Any]) -> None:
        x = m[c.peak]
        if x > ep.peak:
            ep.peak = x

    def _open(self, c: _Compiled, case: _Case, ep: Sustained, ts: int, m: Sequence[Any], eps: list[Sustained],
              out: list[Finding], extra: MessageValues | None) -> None:
        ep.onset_ms = ep.since
        ep.clear_since = -1
        if c.peak >= 0:
            self._track(c, ep, m)
        priority = c.priority
        for p, test in c.raised:
            if test(m, eps, self.s):
                priority = p
                break
        ep.level = priority
        if c.sup_case is not None:
            ep.armed = case.name == c.sup_case
            ep.armed_since = -1
        out.append(self._finding(c, case.message, ep, ts, ep.onset_ms, priority, m, extra))

    def _clear(self, c: _Compiled, ep: Sustained, ts: int, m: Sequence[Any], eps: list[Sustained],
               out: list[Finding], extra: MessageValues | None) -> None:
        onset, clear_since = ep.onset_ms, ep.clear_since
        ep.last_onset_ms = onset
        ep.onset_ms = ep.since = ep.false_since = ep.clear_since = -1
        ep.closed_ms = ts
        ep.armed = False
        priority = c.clear_priority or ep.level or c.priority
        out.append(self._finding(c, c.clear_message, ep, ts, onset, priority, m, extra, cleared=True,
                                 clear_since=clear_since))

    def _superseded(self, c: _Compiled, ep: Sustained, ts: int, m: Sequence[Any], eps: list[Sustained],
                    out: list[Finding], extra: MessageValues | None) -> bool:
        if c.sup_when is None or not c.sup_when(m, eps, self.s):
            ep.armed_since = -1
            return False
        if ep.armed_since < 0:
            ep.armed_since = ts
        if ts - ep.armed_since < c.sup_ms:
            return False
        old = ep.onset_ms
        start = ep.armed_since
        ep.last_onset_ms = old
        ep.onset_ms = ep.since = ep.false_since = ep.clear_since = -1
        priority = ep.level or c.priority
        out.append(self._finding(c, c.sup_clear, ep, ts, old, priority, m, extra, cleared=True))
        ep.onset_ms = ep.since = start
        ep.clear_since = -1
        ep.armed = False
        ep.armed_since = -1
        ep.level = c.priority
        out.append(self._finding(c, c.sup_message, ep, ts, start, c.priority, m, extra))
        return True

    def namespace(self, m: Sequence[Any], extra: MessageValues | None = None) -> dict[str, Any]:
        """Settings (durations also in minutes and hours), measures and extras by name."""
        if self._base_ns is None:
            self._base_ns = _message_settings(self.config)
        ns = dict(self._base_ns)
        ns.update(zip(self._measure_names, m, strict=True))
        if extra is not None:
            ns.update(extra.message_values())
        return ns

    def _finding(self, c: _Compiled, msg: _Message, ep: Sustained, ts: int, onset: int, priority: Priority,
                 m: Sequence[Any], extra: MessageValues | None, *, cleared: bool = False,
                 late: bool = False, clear_since: int = -1) -> Finding:
        ns = self.namespace(m, extra)
        ns["sustained_s"] = (ts - onset) / 1000
        ns["sustained_min"] = (ts - onset) / 60_000
        ns["sustained_h"] = (ts - onset) / 3_600_000
        ns["clearing_min"] = (ts - clear_since) / 60_000
        ns["open_before_clearing_min"] = (clear_since - onset) / 60_000
        ns["peak"] = ep.peak
        ns["late_note"] = " (late reading after re-sync)" if late else ""

        def ev(fn: Callable[[dict[str, Any]], Any] | None) -> Any:
            return None if fn is None else _nan_none(fn(ns))

        value, threshold, window, baseline, trend = (
            ev(msg.value), ev(msg.threshold), ev(msg.window), ev(msg.baseline), ev(msg.trend))
        if c.audience is Audience.CLINICAL:  # shown to nurses: 0.1 mg/dL or bpm, 0.01 per minute
            value = None if value is None else round(value, 1)
            baseline = None if baseline is None else round(baseline, 1)
            trend = None if trend is None else round(trend, 2)
        contributing = msg.contributing
        if contributing is None:
            contributing = (c.signal,)
        elif isinstance(contributing, str):
            contributing = ns[contributing]
        return Finding(
            kind=c.kind, signal=c.signal, priority=priority, audience=c.audience, ts_ms=ts, onset_ms=onset,
            source=c.source, message=msg.template.format_map(ns), value=value, threshold=threshold,
            window_s=window, baseline=baseline, trend_per_min=trend, contributing=contributing, cleared=cleared,
        )
