"""The detector contract: what every detector consumes and what it reports.

Detectors are pure: they see ``(signal, ts_ms, value)`` triples for one patient
and return :class:`Finding` objects. No Kafka, MQTT, InfluxDB or Faust here;
the same code runs in the worker (``streams``) and in offline replay.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

__all__ = ["SIGNALS", "Audience", "Finding", "Priority", "rule_finding"]

#: Signals in canonical units: heart_rate in bpm, glucose in mg/dL, steps as a count.
SIGNALS: tuple[str, ...] = ("heart_rate", "glucose", "steps")


class Priority(str, Enum):  # noqa: UP042 - keep str() of members stable
    """Alarm priority in the sense of IEC 60601-1-8.

    HIGH: death or irreversible injury possible if not answered at once.
    MEDIUM: reversible injury, prompt response needed. LOW: minor or awareness.
    """

    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


class Audience(str, Enum):  # noqa: UP042
    """Who a finding is for: nurses (about the patient) or technicians (about the device)."""

    CLINICAL = "clinical"
    DEVICE = "device"


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing a detector noticed, with the reasons why.

    A detector reports an episode twice: when it begins (``cleared=False``) and
    when it ends (``cleared=True``). ``onset_ms`` is the same in both, so the pair
    (kind, onset_ms) identifies the episode for one patient.
    """

    kind: str
    signal: str
    priority: Priority
    audience: Audience
    ts_ms: int
    onset_ms: int
    source: str  # "rule" or "model"
    message: str
    value: float | None = None
    threshold: float | None = None
    window_s: float | None = None
    baseline: float | None = None
    trend_per_min: float | None = None
    contributing: tuple[str, ...] = field(default_factory=tuple)
    cleared: bool = False

    def explanation(self) -> dict[str, Any]:
        """The why of this finding as a JSON-ready dict (without kind/priority/ts)."""
        d = asdict(self)
        for k in ("kind", "signal", "priority", "audience", "ts_ms", "cleared"):
            d.pop(k)
        d["contributing"] = list(self.contributing)
        return {k: v for k, v in d.items() if v is not None}

    def dump_state(self) -> tuple[Any, ...]:
        """All fields in order, the enums as their values: builtins only.

        The alert book keeps findings in the worker's pickled patient state this way; a
        pickled dataclass with two enums costs several µs. :meth:`from_state` is the inverse.

        >>> f = rule_finding("glucose", "glucose_low", Priority.MEDIUM, 5, 1, "low", value=62.0)
        >>> Finding.from_state(f.dump_state()) == f
        True
        """
        return (self.kind, self.signal, self.priority.value, self.audience.value, self.ts_ms, self.onset_ms,
                self.source, self.message, self.value, self.threshold, self.window_s, self.baseline,
                self.trend_per_min, self.contributing, self.cleared)

    @classmethod
    def from_state(cls, s: tuple[Any, ...]) -> Finding:
        """Inverse of :meth:`dump_state`."""
        kind, signal, priority, audience, *rest = s
        return cls(kind, signal, Priority(priority), Audience(audience), *rest)


def rule_finding(
    signal: str,
    kind: str,
    priority: Priority,
    ts: int,
    onset: int,
    message: str,
    *,
    value: float | None,
    threshold: float | None = None,
    window_s: float | None = None,
    baseline: float | None = None,
    trend_per_min: float | None = None,
    contributing: tuple[str, ...] | None = None,
    cleared: bool = False,
    source: str = "rule",
) -> Finding:
    """A clinical :class:`Finding` about ``signal``: value rounded to 0.1, trend to 0.01.

    ``contributing`` defaults to the signal itself.

    >>> f = rule_finding("glucose", "glucose_low", Priority.MEDIUM, 5, 1, "low", value=62.04, trend_per_min=-1.234)
    >>> (f.value, f.trend_per_min, f.contributing, f.audience.value)
    (62.0, -1.23, ('glucose',), 'clinical')
    """
    return Finding(
        kind=kind, signal=signal, priority=priority, audience=Audience.CLINICAL, ts_ms=ts, onset_ms=onset,
        source=source, message=message, value=None if value is None else round(value, 1), threshold=threshold,
        window_s=window_s, baseline=baseline,
        trend_per_min=None if trend_per_min is None else round(trend_per_min, 2),
        contributing=(signal,) if contributing is None else contributing, cleared=cleared,
    )
