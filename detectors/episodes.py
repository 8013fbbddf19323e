"""Episode bookkeeping shared by every rule: sustained onset, hysteresis on clearing.

An episode *opens* when its condition has held for the rule's sustain time (a
brief lapse does not restart the count, so one noisy reading cannot hide a
sustained low) and *closes* when a separate, stricter clear condition has held
for the rule's clear time. Between the two nothing is reported: the alert
lifecycle layer owns re-notification. :class:`Sustained` is the state of one
episode; the rule engine (:mod:`detectors.rules`) advances it by the rule table.
"""

from __future__ import annotations

from typing import Any

from detectors.config import DetectorConfig

__all__ = [
    "DEFAULT_CONFIG", "IDLE", "IDLE_FIELDS", "EpisodeStarts", "PicklesWithConfig", "Sustained", "config_diff",
    "config_from_diff", "episode_from_state", "idle_fields", "is_shared_idle", "own_episode", "shared_idle_list",
    "shared_time", "shared_time_if_known",
]

#: the default configuration: one object, shared by every monitor and restored state that has no overrides
DEFAULT_CONFIG = _DEFAULT = DetectorConfig()
#: id(config) -> (config, its diff). Every detector of a patient pickles the same config
#: object on every state write; comparing ~70 fields each time was a third of the pickling
#: cost. The config is held, so its id cannot be reused while the entry lives.
_DIFFS: dict[int, tuple[DetectorConfig, dict[str, Any]]] = {id(_DEFAULT): (_DEFAULT, {})}
_DIFFS_MAX = 8192


def config_diff(cfg: DetectorConfig) -> dict[str, Any]:
    """The settings of ``cfg`` that differ from the defaults (what a pickle stores).

    >>> config_diff(DetectorConfig().with_overrides({"glucose_low_mgdl": 75}))
    {'glucose_low_mgdl': 75.0}
    >>> config_diff(DetectorConfig())
    {}
    """
    hit = _DIFFS.get(id(cfg))
    if hit is not None and hit[0] is cfg:
        return dict(hit[1])  # a fresh dict: pickles must not depend on object sharing
    diff = {} if cfg == _DEFAULT else {
        name: getattr(cfg, name)
        for name in cfg.__dataclass_fields__
        if getattr(cfg, name) != getattr(_DEFAULT, name)
    }
    if len(_DIFFS) >= _DIFFS_MAX:
        _DIFFS.clear()
        _DIFFS[id(_DEFAULT)] = (_DEFAULT, {})
    _DIFFS[id(cfg)] = (cfg, diff)
    return dict(diff)


def config_from_diff(diff: dict[str, Any]) -> DetectorConfig:
    """Inverse of :func:`config_diff`."""
    return _DEFAULT.with_overrides(diff) if diff else _DEFAULT


class PicklesWithConfig:
    """Pickling of a detector part pickled on its own: its config's diff and its :meth:`dump_state`.

    Inside a patient's monitor the parts are not pickled this way: ``PatientMonitor.__reduce__``
    stores the config once and each part's ``dump_state()``, and rebuilds the parts with
    ``load_state(config, state)``. Subclasses define those two methods.
    """

    __slots__ = ()
    config: DetectorConfig

    def dump_state(self) -> tuple[Any, ...]:
        """The state without the config, as builtins only (:meth:`load_state` is the inverse)."""
        raise NotImplementedError

    def load_state(self, config: DetectorConfig, s: tuple[Any, ...]) -> None:
        """Set config and state from :meth:`dump_state` (also on an instance made by ``__new__``)."""
        raise NotImplementedError

    def __getstate__(self) -> tuple[Any, ...]:
        return (config_diff(self.config), self.dump_state())

    def __setstate__(self, s: tuple[Any, ...]) -> None:
        self.load_state(config_from_diff(s[0]), s[1])


class Sustained:
    """The state of one episode of one rule: five timestamps (epoch ms, -1 = none).

    ``since``: the open condition has held since then (pending, or open); ``false_since``:
    it has lapsed since then (a tolerated lapse while pending); ``onset_ms``: the open
    episode's onset; ``clear_since``: the clear condition has held since then;
    ``last_onset_ms``: the onset of the episode that cleared last. The rules' parameters
    live in the rule table and the detector's config, so the pickled state is five integers.

    Examples
    --------
    >>> ep = Sustained()
    >>> ep.active, ep.dump_state()
    (False, (-1, -1, -1, -1, -1))
    >>> ep.since = ep.onset_ms = 0
    >>> ep.active, Sustained.from_state(ep.dump_state()) == ep
    (True, True)
    """

    __slots__ = (
        "armed", "armed_since", "clear_since", "closed_ms", "false_since", "last_onset_ms", "level", "onset_ms",
        "peak", "since",
    )

    def __init__(self) -> None:
        self.since = -1
        self.false_since = -1
        self.onset_ms = -1
        self.clear_since = -1
        self.last_onset_ms = -1
        self._memo()

    def _memo(self) -> None:
        # What the rule engine (detectors.rules) remembers about an episode besides its five
        # timestamps; the detectors store these in their own state fields (see their dump_state).
        #: the priority the episode opened with (None: not opened since the state was made)
        self.level: Any = None
        #: the highest value of the rule's tracked measure while pending or open
        self.peak = 0.0
        #: a supersede watch is armed (the episode opened on a path that a further change replaces)
        self.armed = False
        #: since when the supersede condition has held (-1: not holding)
        self.armed_since = -1
        #: when the episode last cleared (-1: never)
        self.closed_ms = -1

    @property
    def active(self) -> bool:
        return self.onset_ms >= 0

    def reset_timer(self) -> None:
        """Forget a pending (not yet opened) sustain count, e.g. after a data gap."""
        if self.onset_ms < 0:
            self.since = -1
            self.false_since = -1

    # -- pickling -------------------------------------------------------------------
    # The detectors keep their episodes in their pickled state as these plain tuples (see
    # detectors.monitor): a pickled object costs about 1 µs, a tuple of five ints almost nothing.
    def dump_state(self) -> tuple[int, int, int, int, int]:
        """The five timestamps (builtins only; :meth:`from_state` is the inverse)."""
        return (self.since, self.false_since, self.onset_ms, self.clear_since, self.last_onset_ms)

    @classmethod
    def from_state(cls, s: tuple[int, int, int, int, int]) -> Sustained:
        """An episode machine restored from :meth:`dump_state`.

        >>> ep = Sustained()
        >>> ep.since = ep.onset_ms = 5
        >>> Sustained.from_state(ep.dump_state()) == ep
        True
        """
        ep = cls.__new__(cls)
        ep.since, ep.false_since, ep.onset_ms, ep.clear_since, ep.last_onset_ms = s
        ep._memo()
        return ep

    def __getstate__(self) -> tuple[Any, ...]:
        # pickled on its own (not through a detector's dump_state): the engine's memos too, when set
        memo = (self.level, self.peak, self.armed, self.armed_since, self.closed_ms)
        return self.dump_state() if memo == (None, 0.0, False, -1, -1) else (*self.dump_state(), *memo)

    def __setstate__(self, s: tuple[Any, ...]) -> None:
        self.since, self.false_since, self.onset_ms, self.clear_since, self.last_onset_ms = s[:5]
        self._memo()
        if len(s) > 5:
            self.level, self.peak, self.armed, self.armed_since, self.closed_ms = s[5:]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sustained) and self.dump_state() == other.dump_state()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Sustained(since={self.since}, onset_ms={self.onset_ms}, clear_since={self.clear_since})"


#: The episode of a rule that has not started yet, shared by every detector: never written.
#: A worker holds ~20 episodes per patient and most never start (a patient without a single
#: bradycardia, flatline or implausible value); an object each would be ~2.3 KB per patient. So a
#: detector's episode list holds IDLE until the episode first starts, and whatever starts it first
#: replaces it with an episode of the detector's own (:func:`own_episode`; the rule engine does this
#: where a count starts or a late reading opens one). Its :meth:`~Sustained.reset_timer` writes
#: the values it has. It is a plain :class:`Sustained` (a subclass guarding its writes would make
#: the rule engine's reads of ``ep.since`` polymorphic, ~9 % of the replay speed); the tests check
#: that it stays untouched (``detectors/test_contract.py``).
IDLE = Sustained()
_IDLE_STATE = (-1, -1, -1, -1, -1)
#: everything IDLE holds: its five timestamps and the engine's memos (what the tests compare)
IDLE_FIELDS = (*_IDLE_STATE, None, 0.0, False, -1, -1)


class EpisodeStarts(Exception):
    """An episode would start in a list from :func:`shared_idle_list`: nothing has been changed yet (a signal
    to the caller, not an error).

    The rule engine raises it where it would replace :data:`IDLE` by an episode of the detector's own
    in such a list; the detector then makes the list its own and steps again (the same step: until
    then the engine only read the measures and the episodes).
    """


#: id -> the lists of :func:`shared_idle_list` (module-level lists, never freed: an id is not reused)
_SHARED_IDLE: dict[int, list[Sustained]] = {}


def shared_idle_list(n: int) -> list[Sustained]:
    """A list of ``n`` :data:`IDLE` shared by every detector none of whose ``n`` episodes has started.

    Never written: the rule engine raises :class:`EpisodeStarts` instead of starting an episode in
    it, so a detector that passes it on every reading pays nothing until an episode first starts
    (a copy made for every reading, to keep if an episode starts in it, costs ~100 ns a reading).
    """
    eps = [IDLE] * n
    _SHARED_IDLE[id(eps)] = eps
    return eps


def is_shared_idle(eps: list[Sustained]) -> bool:
    """Whether ``eps`` is a list of :func:`shared_idle_list` (read-only)."""
    return _SHARED_IDLE.get(id(eps)) is eps


#: recent times (epoch minutes, or milliseconds on a minute's or a sample's boundary) -> one int object for each
_TIMES: dict[int, int] = {}
_TIMES_MAX = 4096


def shared_time(t: int) -> int:
    """``t``, as the one int object every caller gets for an equal time while it is recent.

    A worker's patients are at the same minute (and 30-s sample) of stream time: a part keeping that
    minute holds one shared object rather than a 28-32-byte int of its own. Only plain ints are shared
    (the cache forgets everything once it holds ``_TIMES_MAX`` times).

    >>> a, b = shared_time(29_666_667 + 1), shared_time(29_666_668)
    >>> a is b and a == 29_666_668
    True
    """
    if type(t) is not int:
        return t
    hit = _TIMES.get(t)
    if hit is None:
        if len(_TIMES) >= _TIMES_MAX:
            _TIMES.clear()
        hit = _TIMES[t] = t
    return hit


#: ``shared_time_if_known(t)``: the shared object for ``t`` if there is one, else None (no Python call: for the
#: per-reading paths, which fall back on :func:`shared_time`)
shared_time_if_known = _TIMES.get


def own_episode(eps: list[Sustained], i: int) -> Sustained:
    """``eps[i]``, made the list's own first if it is the shared :data:`IDLE` (call before changing it).

    >>> eps = [IDLE, IDLE]
    >>> ep = own_episode(eps, 1)
    >>> ep.since = 5
    >>> (eps[0] is IDLE, eps[1] is ep, IDLE.since)
    (True, True, -1)
    """
    ep = eps[i]
    if ep is IDLE:
        if is_shared_idle(eps):
            raise EpisodeStarts
        ep = eps[i] = Sustained()
    return ep


def idle_fields() -> tuple[Any, ...]:
    """What :data:`IDLE` holds now (:data:`IDLE_FIELDS` unless something wrote to it)."""
    ep = IDLE
    return (*ep.dump_state(), ep.level, ep.peak, ep.armed, ep.armed_since, ep.closed_ms)


def episode_from_state(s: tuple[int, int, int, int, int]) -> Sustained:
    """An episode restored from :meth:`Sustained.dump_state`: :data:`IDLE` if it had not started."""
    return IDLE if tuple(s) == _IDLE_STATE and all(type(x) is int for x in s) else Sustained.from_state(s)
