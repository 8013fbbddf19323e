"""Data-quality findings about the device, not the patient (``Audience.DEVICE``).

* ``value_implausible`` — a value no body produces (HR < 25 or > 230 bpm,
  glucose < 20 or > 600 mg/dL, > 400 steps in one reading, NaN). The reading
  is always rejected before the clinical rules. A single such value is a glitch
  that needs no technician: it is only counted (:attr:`DeviceQuality.implausible_count`,
  ``PatientMonitor.stats()["implausible"]``). The device is reported when it sends
  ``implausible_repeat`` (3) implausible values within ``implausible_window_s``
  (30 min); the episode clears after ``implausible_clear_s`` of plausible readings.
* ``sensor_flatline`` — the exact same value for ``hr_flatline_s`` (heart rate)
  or ``glucose_flatline_s`` (glucose): a stuck sensor. Steps are exempt (zero
  steps for hours is sleep).
* ``sensor_stale`` — no reading of a signal for ``*_stale_s``; raised by
  :meth:`DeviceQuality.tick` (time-driven). It clears only after readings have
  flowed again for ``stale_clear_s`` (15 min): a flaky link, or a watch taken off
  and put back on a few times in a night, stays one episode. Heart rate and
  steps come from the same watch: while heart rate is stale, a silent step
  counter is part of that finding (``contributing``), not a second one.

All device findings are LOW priority for the technician queue. The rules are the
tables :data:`detectors.rule_table.DEVICE_RULES` (one per signal); this module
counts implausible values and silences and keeps the episodes.
"""

from __future__ import annotations

from typing import Any

from detectors.base import SIGNALS, Finding
from detectors.config import DetectorConfig
from detectors.episodes import IDLE, PicklesWithConfig, Sustained, episode_from_state, shared_time
from detectors.rule_table import DEVICE_RULES
from detectors.rules import CompiledRules

__all__ = ["DeviceQuality"]

_NAN = float("nan")
#: positions in each signal's table
_STALE, _IMPLAUSIBLE, _FLAT = 0, 1, 2
assert [r.kind for r in DEVICE_RULES[0].rules] == ["sensor_stale", "value_implausible", "sensor_flatline"]
_Bound = tuple[DetectorConfig, list["CompiledRules"], list[tuple[float, float]]]
#: id(config) -> (config, each signal's compiled device rules, each signal's plausible range): one per
#: configuration, shared by every patient's detector (the config is held, so its id is not reused meanwhile)
_BOUND: dict[int, _Bound] = {}
_BOUND_MAX = 8192
#: the implausible-reading times of a signal that has had none (shared; replaced by a list on the first)
_NO_BAD: tuple[int, ...] = ()
#: the same for all three signals, then each signal's count of implausible readings (shared; replaced by a list
#: on a patient's first implausible reading)
_NO_BADS: tuple[Any, ...] = (_NO_BAD, _NO_BAD, _NO_BAD, 0, 0, 0)
#: a signal's episodes while none has started (every detector's, shared; the rule engine is given a copy, which
#: the detector keeps once an episode starts in it): a patient without glucose or step data, or whose step
#: counter never stalls, keeps no list of its own for them (glucose and steps: heart rate has its own)
_IDLE3: list[Sustained] = [IDLE, IDLE, IDLE]
#: positions in a detector's per-signal list (``DeviceQuality._last``): newest time, last plausible value
#: (heart rate and glucose); and in its implausible readings (``DeviceQuality._bad_ts``): their count
_TS, _VALUE, _BAD_N = 0, 3, 3


def _limits(c: DetectorConfig, i: int) -> tuple[float, float]:
    if i == 0:
        return c.hr_plausible_min, c.hr_plausible_max
    if i == 1:
        return c.glucose_plausible_min, c.glucose_plausible_max
    return 0.0, c.steps_plausible_max


def _bound(cfg: DetectorConfig) -> _Bound:
    hit = _BOUND.get(id(cfg))
    if hit is None or hit[0] is not cfg:
        if len(_BOUND) >= _BOUND_MAX:
            _BOUND.clear()
        hit = _BOUND[id(cfg)] = (cfg, [rs.compiled(cfg) for rs in DEVICE_RULES],
                                 [_limits(cfg, i) for i in range(len(SIGNALS))])
    return hit


class DeviceQuality(PicklesWithConfig):
    """Implausible values, flatlines and silent sensors, per signal.

    Examples
    --------
    >>> q = DeviceQuality()
    >>> q.check(0, 0, 70.0)
    (True, [])
    >>> q.check(0, 5_000, 400.0)  # one glitch: rejected and counted, not reported
    (False, [])
    >>> q.check(0, 10_000, 0.0)[1], q.implausible_count
    ([], [2, 0, 0])
    >>> ok, fs = q.check(0, 15_000, 255.0)  # the third within 30 min: a device problem
    >>> ok, [(f.kind, f.audience.value) for f in fs]
    (False, [('value_implausible', 'device')])
    >>> [(f.kind, f.cleared) for f in q.tick(35 * 60_000)]
    [('sensor_stale', False)]
    >>> q.tick(36 * 60_000)  # no repeats while the episode continues
    []
    >>> q.check(0, 36 * 60_000, 72.0)[1]  # data again, but not yet for 15 min
    []
    >>> [(f.kind, f.cleared) for f in q.check(0, 51 * 60_000, 73.0)[1]]
    [('sensor_stale', True), ('value_implausible', True)]
    """

    # one per patient in a worker: slots, and the compiled rules shared per config
    __slots__ = ("_bad_ts", "_eps", "_last", "_rules_for", "_tick_ms", "config")

    def __init__(self, config: DetectorConfig | None = None) -> None:
        self.config = config or DetectorConfig()
        # per signal i: [i] its newest time, [3 + i] its last plausible value. Read and written on every
        # reading, so a list (an array makes a new int or float object on every read), one for the three (a
        # list is ~80 bytes); None until the first reading
        self._last: list[Any] | None = None
        #: per signal i: [i] the times of its recent implausible readings, [3 + i] how many it has had (the
        #: shared _NO_BADS until the first: most patients' devices never send one)
        self._bad_ts: list[Any] | tuple[Any, ...] = _NO_BADS
        #: per signal its episodes [stale, implausible, flatline]: its table's order (steps have no flatline
        #: rule: the table steps the first two); empty until the first reading
        self._eps: tuple[list[Sustained], ...] = ()
        self._tick_ms = -1  # the time of the current time-driven check (for the stale message)
        self._rules_for: _Bound | None = None

    def _init(self) -> None:
        self._last = [-1, -1, -1, _NAN, _NAN, _NAN]
        # heart rate gets its own list at once: its readings are most of them (a copy each would cost ~2 %
        # of the replay speed) and a repeated value soon starts its flatline count anyway
        self._eps = ([IDLE, IDLE, IDLE], _IDLE3, _IDLE3)

    @property
    def implausible_count(self) -> list[int]:
        """Implausible readings per signal (reported or not)."""
        return list(self._bad_ts[_BAD_N:_BAD_N + 3])

    @property
    def stale(self) -> list[Sustained]:
        """Each signal's ``sensor_stale`` episode."""
        return [e[_STALE] for e in self._eps]

    @property
    def implausible(self) -> list[Sustained]:
        """Each signal's ``value_implausible`` episode."""
        return [e[_IMPLAUSIBLE] for e in self._eps]

    @property
    def flat(self) -> list[Sustained]:
        """Each signal's ``sensor_flatline`` episode (never started for steps)."""
        return [e[_FLAT] for e in self._eps]

    def _bind(self) -> _Bound:
        """Each signal's device rule table compiled for this detector's config, and its plausible range."""
        r = self._rules_for
        if r is None or r[0] is not self.config:
            r = self._rules_for = _bound(self.config)
        return r

    @property
    def rules(self) -> list[CompiledRules]:
        """Each signal's device rule table compiled for this detector's config (made on first use)."""
        return self._bind()[1]

    def check(self, i: int, ts: int, v: float) -> tuple[bool, list[Finding]]:
        """Check one reading of signal index ``i`` (0 HR, 1 glucose, 2 steps).

        Returns ``(usable, findings)``; unusable readings must not reach the rules.
        """
        lasts = self._last
        if lasts is None:
            self._init()
            lasts = self._last
            assert lasts is not None
        cfg = self.config
        out: list[Finding] = []
        last = lasts[i]
        bound = self._rules_for
        if bound is None or bound[0] is not cfg:
            bound = self._bind()
        rules = bound[1]
        lo, hi = bound[2][i]
        ok = lo <= v <= hi  # False for NaN
        bad = self._bad_ts[i]
        if not ok:
            bads = self._bad_ts
            if not isinstance(bads, list):  # the shared _NO_BADS: the detector's own list first
                bads = self._bad_ts = list(bads)
            bads[_BAD_N + i] += 1
            if not isinstance(bad, list):
                bad = bads[i] = []
            bad.append(ts)
            win = cfg.implausible_window_s * 1000
            while bad and ts - bad[0] > win:
                del bad[0]
            if len(bad) > cfg.implausible_repeat:
                del bad[0]
        eps = self._eps[i]
        shared = eps is _IDLE3
        if shared:
            eps = [IDLE, IDLE, IDLE]
        rules[i].step_values(ts, eps, out, self,
                             v, True, ts > last, ok, len(bad), v == lasts[3 + i], 0.0, last, False)
        if shared and (eps[0] is not IDLE or eps[1] is not IDLE or eps[2] is not IDLE):
            self._adopt(i, eps)
        if ts > last:
            if i < 2:
                lasts[i] = ts
                if ok:
                    lasts[3 + i] = v
            else:  # step counts are stamped at the minute's start, the same for a worker's patients: one object
                lasts[i] = shared_time(ts)
        return ok, out

    def tick(self, now_ms: int) -> list[Finding]:
        """Open ``sensor_stale`` for every signal silent for longer than its limit."""
        last_ts = self._last
        if last_ts is None:
            return []
        bound = self._rules_for
        if bound is None or bound[0] is not self.config:
            bound = self._bind()
        rules = bound[1]
        out: list[Finding] = []
        self._tick_ms = now_ms
        for i in (0, 1, 2):
            last = last_ts[i]
            if last < 0:
                continue  # never seen: nothing to miss
            all_eps = self._eps
            eps = all_eps[i]
            shared = eps is _IDLE3
            if shared:
                eps = [IDLE, IDLE, IDLE]
            rules[i].step_values(now_ms, eps, out, self, _NAN, False, False, True, 0, False,
                                 (now_ms - last) / 1000, last, all_eps[0][_STALE].onset_ms >= 0)
            if shared and (eps[0] is not IDLE or eps[1] is not IDLE or eps[2] is not IDLE):
                self._adopt(i, eps)
        return out

    def _adopt(self, i: int, eps: list[Sustained]) -> None:
        """Signal ``i``'s episodes are ``eps`` (an episode started in the copy of the shared idle list)."""
        all_eps = list(self._eps)
        all_eps[i] = eps
        self._eps = tuple(all_eps)

    def next_due_ms(self, readings: bool = False) -> int | None:
        """The earliest time at which :meth:`tick` could report or change something (None: not before the
        next reading; a time earlier than necessary is allowed, never a later one).

        Only ``sensor_stale`` is time-driven: a signal's check acts once it has been silent for longer than
        its limit, unless its stale episode is open with no data flowing again (nothing left to change), or
        it is the step counter while heart rate is reported stale (the same watch). Any reading can change
        this: ask again after one. With ``readings``, a bound that stays valid after readings of signals
        seen before, until a reading or a check reports something: those two exceptions are counted too.

        >>> q = DeviceQuality()
        >>> q.next_due_ms() is None
        True
        >>> _ = q.check(0, 60_000, 70.0)
        >>> q.next_due_ms() == 60_000 + int(q.config.hr_stale_s * 1000) - 1
        True
        >>> q.tick(q.next_due_ms()), len(q.tick(q.next_due_ms() + 2))
        ([], 1)
        >>> q.next_due_ms() is None  # open, and silent: nothing changes until the next reading
        True
        """
        last_ts = self._last
        if last_ts is None:
            return None
        due: int | None = None
        # heart rate, glucose, steps (runs for every patient readings changed: kept lean)
        for i in (0, 1, 2):
            last = last_ts[i]
            if last >= 0:
                ep = self.stale[i]
                # not when reported and still silent (a check only confirms it), nor for the step counter of
                # a watch reported off (part of that finding)
                if readings or ((ep.onset_ms < 0 or ep.clear_since >= 0)
                                and (i != 2 or ep.since >= 0 or self.stale[0].onset_ms < 0)):
                    cfg = self.config
                    limit_s = cfg.hr_stale_s if i == 0 else cfg.glucose_stale_s if i == 1 else cfg.steps_stale_s
                    # acts when (now - last) / 1000 > limit_s; a millisecond early against rounding
                    at = last + int(limit_s * 1000) - 1
                    if due is None or at < due:
                        due = at
        return due

    def message_values(self) -> dict[str, Any]:
        """Values for the rule table's messages (its ``extras``), computed when a finding is written.

        Heart rate and steps come from the same watch: when both are silent at a check, the
        heart-rate stale finding names both (and steps are not reported on their own).
        """
        last_ts = self._last
        now = self._tick_ms
        both = last_ts is not None and last_ts[2] >= 0 and now - last_ts[2] > self.config.hr_stale_s * 1000
        return {
            "silent_signals": "heart-rate or step" if both else SIGNALS[0],
            "silent_contributing": (SIGNALS[0], SIGNALS[2]) if both else (SIGNALS[0],),
        }

    # -- pickling: builtins only (see PatientMonitor.__reduce__) ---------------------
    def dump_state(self) -> tuple[Any, ...]:
        """The state without the config, as builtins only (:meth:`load_state` is the inverse).

        The nine episode machines go in as tuples: pickling each as an object costs ~1 µs. The
        layout is the one of the detectors before the rule table (states stored by them load):
        since when data has flowed again for a stale sensor (its clear count) is kept apart.
        """
        stale = [(ep.since, ep.false_since, ep.onset_ms, -1, ep.last_onset_ms) for ep in self.stale]
        lasts = self._last
        return (None if lasts is None else lasts[_TS:_TS + 3], [] if lasts is None else lasts[_VALUE:_VALUE + 3],
                [ep.dump_state() for ep in self.implausible],
                [ep.dump_state() for ep in self.flat], stale,
                self.implausible_count, [list(b) for b in self._bad_ts[:3]],
                [ep.clear_since for ep in self.stale] or [-1, -1, -1])

    def load_state(self, config: DetectorConfig, s: tuple[Any, ...]) -> None:
        """Set config and state from :meth:`dump_state` (also on an instance made by ``__new__``)."""
        self.config = config
        self._rules_for = None
        self._tick_ms = -1
        last_ts, last_value, implausible, flat, stale, implausible_count, bad_ts, resume = s
        if last_ts is None and not last_value and not any(implausible_count):
            self._last = None
        elif last_ts is not None and len(last_ts) == len(last_value) == len(implausible_count) == 3:
            self._last = [*last_ts, *last_value]
        else:
            raise ValueError(f"device-quality state with newest times {last_ts}, last values {last_value} and "
                             f"implausible counts {implausible_count}")
        # the counts are kept from a first reading on (a state without one counts none, as it always did)
        counts = [0, 0, 0] if self._last is None else implausible_count
        bads = [*(b if b else _NO_BAD for b in bad_ts), *counts]
        none = all(b is _NO_BAD for b in bads[:3]) and all(type(c) is int and c == 0 for c in counts)
        self._bad_ts = _NO_BADS if none else bads
        # since when data has flowed again for a stale sensor is its clear count (kept apart, see dump_state)
        stale = [(*ep[:3], resume[k], *ep[4:]) if k < len(resume) else ep for k, ep in enumerate(stale)]
        eps = [[episode_from_state(s0), episode_from_state(s1), episode_from_state(s2)]
               for s0, s1, s2 in zip(stale, implausible, flat, strict=True)]
        self._eps = tuple(_IDLE3 if e == _IDLE3 and all(x is IDLE for x in e) else e for e in eps)
