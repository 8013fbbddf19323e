"""Alert lifecycle: detector findings become alerts that nurses acknowledge, snooze and see resolve.

Pure and deterministic: no I/O, no clocks. Every method takes the time it should
act at (*stream-equivalent* milliseconds, the same time base for every call), and
returns the :class:`~alerts.models.AlertEvent` objects to publish, in order. One
:class:`AlertBook` per patient lives inside the worker's pickled patient state,
so the lifecycle survives restarts and rebalances; it pickles compactly (a few
hundred bytes per alert).

States and events
-----------------
An alert is ``open`` → (``updated``) → ``acknowledged`` → ``resolved``. Every
event gets the next ``revision`` of its alert (``open`` is revision 0), so the
README's duplicate key ``alert_id:revision:state`` stays unique, also for
reminders whose state does not change. ``cause`` says why the event exists,
``notify`` whether the route should be alerted (paged) by it, ``notified`` how
many notifying events the alert has produced so far.

* **One alert per (patient, kind).** An onset while an alert of that kind is
  active does not open another alert: it is an ``updated`` event (cause
  ``priority_up`` if it raises the priority, else ``new_episode``) and needs a
  new acknowledgement. A finding seen before (same kind and ``onset_ms``) is
  ignored, so re-delivered findings emit nothing. The alert resolves
  (``resolved``, cause ``cleared``) when *every* detector episode it collected
  has cleared; if the highest-priority episode clears while a lower one is
  active, an informational ``priority_down`` event follows instead.
  Device findings are kept per (kind, signal): ``sensor_stale`` of the heart-rate
  sensor and of the CGM are two alerts.
* **Alert id** = :func:`~alerts.models.alert_id_for` (patient, kind, ``onset_ms``
  of the *first* episode) — deterministic, so reprocessing yields the same ids.
  For device alerts ``kind`` in that hash is ``"{kind}/{signal}"``.
* **Hold-off (anti-flapping).** The detectors clear with hysteresis; on top of
  that a resolved alert is remembered for a hold-off per priority (default
  15 min). A new onset of the same kind within the hold-off **re-opens the same
  alert id** as ``updated`` (cause ``reopened``, notifying, acknowledgement
  cleared) instead of opening a new alert; after the hold-off a new onset opens
  a new alert (new id). We re-open rather than suppress: a recurring
  hypoglycaemia must reach a nurse, but it stays one alert thread, not many.
  The hold-off runs on the **findings' own times** (the newest finding so far),
  not on the clock :meth:`AlertBook.tick` advances: the worker ticks with
  stream-equivalent time (another signal's newest reading plus wall time), so a
  tick could otherwise end a hold-off before a late finding and make the same
  readings give ``onset`` live and ``reopened`` in an offline replay.
* **Reminders.** An unacknowledged alert gets a ``renotify`` event (same state,
  ``notify=True``) every ``renotify_<priority>_ms`` (default high 5 min, medium
  15 min, low 60 min), on a drift-free schedule (open + k·interval); after a gap
  in ticks only one reminder is sent, not a burst.
* **Escalation.** A HIGH clinical alert unacknowledged for
  ``escalate_high_after_ms`` (default 10 min) emits one ``escalated`` event
  (``escalated=True``, route ``charge_nurse``); ``escalated`` stays set for the
  alert and its later events go to the charge nurse route as well. If a
  reminder is due at the same tick the escalation replaces it.
* **Snooze** (per kind, by a named nurse): no reminders and no new alert of that
  kind until it ends (onsets meanwhile are kept and open the alert when the
  snooze ends if the episode is still active); an active alert gets a
  ``snoozed`` event, and ``snooze_ended`` when it ends (notifying if still
  unacknowledged). A snooze is *not* an acknowledgement. Safety: a kind that can
  be HIGH (``high_kinds``, e.g. ``glucose_urgent_low``) or whose alert is HIGH
  can be snoozed for at most ``snooze_cap_high_ms`` (default 5 min) from the
  snooze request — if an alert becomes HIGH during a longer snooze, the snooze
  is cut to that cap — and **escalation is never paused by a snooze**. Other
  kinds are capped at ``snooze_max_ms`` (default 8 h). ``until_ms <= now``
  cancels a snooze.
* **Notes** (by a named nurse, 1-1000 characters) are kept with the alert (the
  :data:`NOTES_KEPT` most recent) and shown in every later event; adding one emits
  an informational event (cause ``note``, state unchanged). Notes are accepted on
  every alert the book still holds, resolved ones within their hold-off included,
  so a note written just as the alert resolved is not lost.
* **Routes.** ``audience_route`` is ``device`` for device findings (stale
  sensor, flatline, implausible values: for technicians, never escalated),
  ``clinical`` for clinical ones, ``charge_nurse`` once escalated.

Time never goes backwards inside a book: a call with an earlier ``now_ms`` than
a previous one acts at the later time.

Integration into the worker (sketch)
------------------------------------
Keep one book per patient inside ``PatientState`` (pickled with it)::

    book = AlertBook(pid, ward=enrollment.ward_for(pid), policy=policy)   # first time the patient is seen
    for finding in st.monitor.update(signal, ts_ms, value):
        events += book.on_finding(finding, now_ms=stream_now)            # instead of AlertEvent.from_finding
    events += book.tick(stream_now)                                       # in the periodic tick
    events += book.ack(ack.alert_id, ack.by, stream_now)                  # a contract Ack, routed by patient
    events += book.snooze(sn.kind, sn.until_ms, sn.by, stream_now)        # a contract Snooze
    events += book.note(n.alert_id, n.by, n.text, stream_now)             # a contract Note
    # emit each event to Kafka ``alerts`` (key = patient id); if any: publish book.open_alerts() retained

``stream_now`` is the same stream-equivalent clock the detectors' ``tick`` gets.

Examples
--------
>>> from detectors.base import Audience, Finding, Priority
>>> f = Finding("glucose_urgent_low", "glucose", Priority.HIGH, Audience.CLINICAL,
...             ts_ms=600_000, onset_ms=600_000, source="rule", message="glucose 50 mg/dL")
>>> book = AlertBook("p-1", ward="3B")
>>> [(e.state, e.revision, e.cause, e.audience_route) for e in book.on_finding(f, 600_000)]
[('open', 0, 'onset', 'clinical')]
>>> [(e.state, e.revision, e.cause) for e in book.tick(600_000 + 5 * 60_000)]
[('open', 1, 'renotify')]
>>> alert_id = book.open_alerts()[0].alert_id
>>> [(e.state, e.acked_by) for e in book.ack(alert_id, "nurse.kim", 600_000 + 6 * 60_000)]
[('acknowledged', 'nurse.kim')]
>>> book.tick(600_000 + 30 * 60_000)
[]
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, cast

from alerts.models import AlertCause, AlertEvent, AlertNote, AlertRoute, AlertState, alert_id_for
from detectors.base import Audience, Finding, Priority
from wearwatch.contract.commands import NOTE_MAX_CHARS
from wearwatch.contract.priority import PriorityName, priority_rank

__all__ = ["DEFAULT_POLICY", "DUE_NOW", "NOTES_KEPT", "NOTE_MAX_CHARS", "AlertBook", "LifecyclePolicy"]

_MIN = 60_000
#: notes kept per alert (the oldest is dropped beyond this; every note stays on Kafka ``alerts``)
NOTES_KEPT = 20
_Prio = PriorityName


def _prio(f: Finding) -> _Prio:
    return cast(_Prio, Priority(f.priority).value)


def _slot(f: Finding) -> str:
    """What one alert is kept per: the kind, plus the signal for device findings.

    Clinical kinds name their signal already (``glucose_low``); device kinds do
    not (``sensor_stale`` for heart rate and for glucose are different problems).

    >>> from detectors.base import Audience, Finding, Priority
    >>> _slot(Finding("sensor_stale", "glucose", Priority.LOW, Audience.DEVICE, 0, 0, "rule", "silent"))
    'sensor_stale/glucose'
    """
    return f.kind if f.audience is Audience.CLINICAL else f"{f.kind}/{f.signal}"


@dataclass(frozen=True, slots=True)
class LifecyclePolicy:
    """Timings and safety limits of the alert lifecycle (milliseconds; 0 turns a timer off).

    Examples
    --------
    >>> p = LifecyclePolicy()
    >>> p.renotify_ms("high"), p.renotify_ms("medium"), p.renotify_ms("low")
    (300000, 900000, 3600000)
    >>> LifecyclePolicy(renotify_high_ms=-1)
    Traceback (most recent call last):
    ...
    ValueError: renotify_high_ms must be >= 0, got -1
    """

    renotify_high_ms: int = 5 * _MIN
    renotify_medium_ms: int = 15 * _MIN
    renotify_low_ms: int = 60 * _MIN
    #: a HIGH clinical alert unacknowledged this long escalates to the charge nurse
    escalate_high_after_ms: int = 10 * _MIN
    #: a resolved alert re-opens (same id) on a new onset within this time after resolution
    holdoff_high_ms: int = 15 * _MIN
    holdoff_medium_ms: int = 15 * _MIN
    holdoff_low_ms: int = 15 * _MIN
    #: longest snooze for a kind that is (or can be) HIGH
    snooze_cap_high_ms: int = 5 * _MIN
    #: longest snooze for any other kind
    snooze_max_ms: int = 8 * 60 * _MIN
    #: kinds that can be raised at HIGH priority: their snooze is always capped at ``snooze_cap_high_ms``
    high_kinds: frozenset[str] = frozenset({"glucose_urgent_low", "bradycardia", "tachycardia_at_rest"})
    #: audiences whose HIGH alerts escalate (device alerts go to technicians and never escalate)
    escalate_audiences: frozenset[str] = frozenset({"clinical"})
    #: detector episodes remembered per alert (the oldest is forgotten beyond this)
    max_episodes: int = 8

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, int) and v < 0:
                raise ValueError(f"{f.name} must be >= 0, got {v}")
        if self.max_episodes < 1:
            raise ValueError("max_episodes must be >= 1")
        if self.snooze_cap_high_ms > self.snooze_max_ms:
            raise ValueError("snooze_cap_high_ms must not exceed snooze_max_ms")

    def renotify_ms(self, priority: str) -> int:
        """Reminder interval for an unacknowledged alert of this priority (0: no reminders)."""
        return {"high": self.renotify_high_ms, "medium": self.renotify_medium_ms, "low": self.renotify_low_ms}[
            priority
        ]

    def holdoff_ms(self, priority: str) -> int:
        """How long a resolved alert of this priority can still re-open under its own id."""
        return {"high": self.holdoff_high_ms, "medium": self.holdoff_medium_ms, "low": self.holdoff_low_ms}[priority]


#: The policy used when none is given (and not stored in pickles).
DEFAULT_POLICY = LifecyclePolicy()


class _Alert:
    """One alert's lifecycle record (internal; pickled as a plain tuple)."""

    __slots__ = (
        "acked_by",
        "acked_ms",
        "alert_id",
        "cause",
        "emitted_ms",
        "episodes",
        "escalated",
        "high_since_ms",
        "last",
        "next_notify_ms",
        "notes",
        "notified",
        "notify",
        "onset_ms",
        "priority",
        "resolved_ms",
        "revision",
        "state",
        "ts_ms",
    )

    def __init__(self, alert_id: str, finding: Finding) -> None:
        self.alert_id = alert_id
        #: onset of the first episode (the alert id is derived from it)
        self.onset_ms = finding.onset_ms
        self.state: AlertState = "open"
        self.revision = -1  # nothing emitted yet
        self.priority: _Prio = _prio(finding)
        #: active detector episodes: onset_ms -> the onset finding
        self.episodes: dict[int, Finding] = {}
        #: the finding shown in events (message, explanation, signal)
        self.last = finding
        self.acked_by: str | None = None
        self.acked_ms: int | None = None
        self.notified = 0
        self.next_notify_ms: int | None = None
        self.high_since_ms: int | None = None
        self.escalated = False
        self.resolved_ms: int | None = None
        # the last emitted event's variable parts (to rebuild it as a snapshot)
        self.cause: AlertCause | None = None
        self.notify = False
        self.emitted_ms = 0
        self.ts_ms = 0
        #: nurses' notes, oldest first: (by, ts_ms, text)
        self.notes: list[tuple[str, int, str]] = []

    @property
    def announced(self) -> bool:
        return self.revision >= 0

    @property
    def active(self) -> bool:
        """Announced and not resolved: what nurses currently see."""
        return self.revision >= 0 and self.state != "resolved"

    @property
    def pending(self) -> bool:
        """Has active episodes nobody was told about yet (held back by a snooze)."""
        return bool(self.episodes) and (self.revision < 0 or self.state == "resolved")

    def top_priority(self) -> _Prio:
        return min((_prio(f) for f in self.episodes.values()), key=priority_rank)

    def top_finding(self) -> Finding:
        """The newest episode among those of the highest priority."""
        return max(self.episodes.values(), key=lambda f: (-priority_rank(f.priority.value), f.onset_ms))

    def dump_state(self) -> tuple[Any, ...]:
        """Every field, the findings as plain tuples (see :meth:`AlertBook.__reduce__`)."""
        return (
            self.alert_id, self.onset_ms, self.state, self.revision, self.priority,
            {onset: f.dump_state() for onset, f in self.episodes.items()}, self.last.dump_state(),
            self.acked_by, self.acked_ms, self.notified, self.next_notify_ms, self.high_since_ms,
            self.escalated, self.resolved_ms, self.cause, self.notify, self.emitted_ms, self.ts_ms, self.notes,
        )

    @classmethod
    def from_state(cls, s: tuple[Any, ...]) -> _Alert:
        """Inverse of :meth:`dump_state`."""
        a = cls.__new__(cls)
        (a.alert_id, a.onset_ms, a.state, a.revision, a.priority, episodes, last,
         a.acked_by, a.acked_ms, a.notified, a.next_notify_ms, a.high_since_ms,
         a.escalated, a.resolved_ms, a.cause, a.notify, a.emitted_ms, a.ts_ms) = s[:18]
        # states stored before notes existed have 18 fields
        a.notes = list(s[18]) if len(s) > 18 else []
        a.episodes = {onset: Finding.from_state(f) for onset, f in episodes.items()}
        a.last = Finding.from_state(last)
        return a


#: what :meth:`AlertBook.next_due_ms` reports for something due whatever time a tick gives
DUE_NOW = -(2**62)

#: how many forgotten alert ids a book remembers
_RETIRED_KEPT = 16


#: the containers of a book that has none of its own yet (shared by every such book; never written)
_NO_ALERTS: dict[str, Any] = {}
_NO_SNOOZES: dict[str, tuple[int, int, str]] = {}
_NO_RETIRED: list[str] = []


class AlertBook:
    """The alerts of one patient and their lifecycle (see the module docs for the rules).

    Parameters
    ----------
    patient_id
        The patient this book belongs to (copied into every event).
    ward
        The patient's ward (from :mod:`alerts.enrollment`); copied into every event.
        Assign ``book.ward`` when the enrollment changes.
    policy
        Timings and limits; :data:`DEFAULT_POLICY` if omitted. A default policy is
        not stored in the pickle; assign ``book.policy`` after unpickling to
        change it (the book always uses the policy it currently holds).

    Notes
    -----
    All methods are pure apart from updating the book, take ``now_ms`` in one
    consistent (stream-equivalent) time base, and return the events to publish,
    in order (possibly none).

    Examples
    --------
    >>> import pickle
    >>> book = AlertBook("p-7", ward="ICU")
    >>> len(pickle.dumps(book)) < 200
    True
    """

    # A worker holds one book per patient and most have no alert, snooze or retired id: the three
    # containers start as shared empty ones (~180 bytes a patient) and a book gets its own on its first
    # write (_own_alerts, _own_snoozes, _own_retired); nothing writes to the shared ones (tested).
    __slots__ = ("_by_slot", "_found_ms", "_last_ms", "_retired_ids", "_snoozed", "patient_id", "policy", "ward")

    def __init__(self, patient_id: str, ward: str | None = None, policy: LifecyclePolicy | None = None) -> None:
        self.patient_id = patient_id
        self.ward = ward
        self.policy = policy or DEFAULT_POLICY
        self._by_slot: dict[str, _Alert] = _NO_ALERTS  # slot (see _slot) -> alert
        self._snoozed: dict[str, tuple[int, int, str]] = _NO_SNOOZES  # kind -> (start_ms, until_ms, by)
        self._last_ms = 0  # the book's clock: newest time it was given (findings, ticks, commands)
        self._found_ms = 0  # the findings' clock: newest finding time (hold-offs; see the module docs)
        #: ids of the most recent alerts forgotten after their hold-off (a re-reported old onset is ignored)
        self._retired_ids: list[str] = _NO_RETIRED

    def _own_alerts(self) -> dict[str, _Alert]:
        alerts = self._by_slot
        if alerts is _NO_ALERTS:
            alerts = self._by_slot = {}
        return alerts

    def _own_snoozes(self) -> dict[str, tuple[int, int, str]]:
        snoozes = self._snoozed
        if snoozes is _NO_SNOOZES:
            snoozes = self._snoozed = {}
        return snoozes

    def _own_retired(self) -> list[str]:
        retired = self._retired_ids
        if retired is _NO_RETIRED:
            retired = self._retired_ids = []
        return retired

    # The containers as the stored forms read and set them (streams.state_codec, _restore_book): an empty
    # one set becomes the shared empty one.
    @property
    def _alerts(self) -> dict[str, _Alert]:
        return self._by_slot

    @_alerts.setter
    def _alerts(self, alerts: dict[str, _Alert]) -> None:
        self._by_slot = alerts if alerts else _NO_ALERTS

    @property
    def _snoozes(self) -> dict[str, tuple[int, int, str]]:
        return self._snoozed

    @_snoozes.setter
    def _snoozes(self, snoozes: dict[str, tuple[int, int, str]]) -> None:
        self._snoozed = snoozes if snoozes else _NO_SNOOZES

    @property
    def _retired(self) -> list[str]:
        return self._retired_ids

    @_retired.setter
    def _retired(self, retired: list[str]) -> None:
        self._retired_ids = retired if retired else _NO_RETIRED

    # -- pickling ---------------------------------------------------------
    # The book is part of every patient state the worker pickles on each commit, and pickle
    # pays about 1 µs for each object it saves through __reduce_ex__/__getstate__ (several for a
    # finding with its enums): alerts and their findings go in as plain tuples, and the book
    # as one call of _restore_book.
    def __reduce__(self) -> tuple[Any, ...]:
        policy = self.policy
        return (_restore_book, (
            self.patient_id, self.ward, None if policy is DEFAULT_POLICY or policy == DEFAULT_POLICY else policy,
            {slot: a.dump_state() for slot, a in self._by_slot.items()}, self._snoozed, self._last_ms,
            self._retired_ids, self._found_ms,
        ))

    # -- queries ------------------------------------------------------------
    def open_alerts(self) -> list[AlertEvent]:
        """The latest event of every active (not resolved) alert, oldest first.

        This is what a nurse should currently see for the patient (the retained
        MQTT state); alerts held back by a snooze and resolved ones are not listed.
        """
        alerts = sorted((a for a in self._by_slot.values() if a.active), key=lambda a: (a.onset_ms, a.alert_id))
        return [self._event(a) for a in alerts]

    def snoozes(self) -> dict[str, tuple[int, str]]:
        """Active snoozes: kind -> (effective until_ms, by)."""
        return {k: (self._snooze_end(k), s[2]) for k, s in self._snoozed.items()}

    def __len__(self) -> int:
        """Number of alert records kept (active, held back, or resolved within their hold-off)."""
        return len(self._by_slot)

    # -- commands ---------------------------------------------------------------
    def on_finding(self, finding: Finding, now_ms: int | None = None) -> list[AlertEvent]:
        """Apply one detector finding (an onset or a clear).

        ``now_ms`` defaults to ``finding.ts_ms``.
        """
        t = self._time(finding.ts_ms if now_ms is None else now_ms)
        if finding.ts_ms > self._found_ms:
            self._found_ms = finding.ts_ms
        events = self._advance(t)
        slot = _slot(finding)
        a = self._by_slot.get(slot)
        if finding.cleared:
            if a is None or finding.onset_ms not in a.episodes:
                return events  # a clear we never saw the onset of, or a repeated clear
            del a.episodes[finding.onset_ms]
            if not a.active:  # held back by a snooze: never announced, forget quietly
                if not a.episodes:
                    if a.revision < 0:
                        del self._by_slot[slot]
                else:
                    a.priority, a.last = a.top_priority(), a.top_finding()
                return events
            if not a.episodes:
                a.last = finding
                a.state = "resolved"
                a.resolved_ms = self._found_ms  # the hold-off runs on the findings' clock
                a.next_notify_ms = a.high_since_ms = None
                events.append(self._emit(a, "cleared", False, t, finding.ts_ms))
            elif priority_rank(a.top_priority()) > priority_rank(a.priority):  # a less urgent one is left
                a.priority = a.top_priority()
                a.last = a.top_finding()
                if a.priority != "high":
                    a.high_since_ms = None
                events.append(self._emit(a, "priority_down", False, t, finding.ts_ms))
            return events

        if a is not None and finding.onset_ms in a.episodes:
            return events  # seen before (re-delivery)
        if a is None and alert_id_for(self.patient_id, slot, finding.onset_ms) in self._retired_ids:
            return events  # an episode already raised, resolved and forgotten, reported again: seen before
        if a is None:
            a = self._own_alerts()[slot] = _Alert(alert_id_for(self.patient_id, slot, finding.onset_ms), finding)
        self._add_episode(a, finding)
        snoozed = finding.kind in self._snoozed
        if a.revision < 0 or a.state == "resolved":
            a.priority = a.top_priority()
            a.last = a.top_finding()
            if not snoozed:
                events.append(self._announce(a, t, finding.ts_ms))
        else:
            old = a.priority
            a.priority = a.top_priority()
            a.last = a.top_finding()
            up = priority_rank(a.priority) < priority_rank(old)
            self._unack(a, t)
            events.append(self._emit(a, "priority_up" if up else "new_episode", up or not snoozed, t, finding.ts_ms))
        # a priority change can shorten a snooze (HIGH cap) and so end it now
        return events + self._advance(t)

    def ack(self, alert_id: str, by: str, now_ms: int) -> list[AlertEvent]:
        """A nurse acknowledged an alert: stops reminders and escalation.

        Acknowledging an unknown, resolved or already acknowledged alert emits nothing.
        """
        t = self._time(now_ms)
        events = self._advance(t)
        for a in self._by_slot.values():
            if a.alert_id == alert_id and a.active and a.state != "acknowledged":
                a.state = "acknowledged"
                a.acked_by, a.acked_ms = by, t
                a.next_notify_ms = a.high_since_ms = None
                events.append(self._emit(a, "acknowledged", False, t, t))
        return events

    def snooze(self, kind: str, until_ms: int, by: str, now_ms: int) -> list[AlertEvent]:
        """Snooze one kind of alert until ``until_ms`` (capped, see the module docs); ``until_ms <= now`` cancels.

        Returns a ``snoozed`` (or, when cancelling, ``snooze_ended``) event if an
        alert of that kind is active, else nothing.
        """
        t = self._time(now_ms)
        events = self._advance(t)
        if until_ms <= t:
            if self._snoozed.pop(kind, None) is not None:
                events += self._end_snooze(kind, t)
            return events
        self._own_snoozes()[kind] = (t, until_ms, by)
        for a in self._of_kind(kind):
            if a.active:
                events.append(self._emit(a, "snoozed", False, t, t))
        return events

    def note(self, alert_id: str, by: str, text: str, now_ms: int) -> list[AlertEvent]:
        """A nurse wrote a note on an alert: kept with it, and one informational event (cause ``note``).

        Accepted for every alert the book still holds (open, acknowledged, or resolved within its
        hold-off); an unknown id emits nothing. ``text`` is trimmed to :data:`NOTE_MAX_CHARS`.
        """
        t = self._time(now_ms)
        events = self._advance(t)
        text = text.strip()[:NOTE_MAX_CHARS]
        if not text:
            return events
        for a in self._by_slot.values():
            if a.alert_id == alert_id and a.announced:
                a.notes.append((by, t, text))
                del a.notes[:-NOTES_KEPT]
                events.append(self._emit(a, "note", False, t, t))
        return events

    def discharge(self, now_ms: int) -> list[AlertEvent]:
        """The patient was discharged: every active alert resolves (cause ``discharged``, not notifying),
        alerts held back by a snooze are dropped, snoozes end. The detector episodes are forgotten, so
        a patient enrolled again starts with no alert open.

        >>> from detectors.base import Audience, Finding, Priority
        >>> book = AlertBook("p-1", ward="3B")
        >>> _ = book.on_finding(Finding("glucose_low", "glucose", Priority.MEDIUM, Audience.CLINICAL,
        ...                             ts_ms=1000, onset_ms=1000, source="rule", message="low"))
        >>> [(e.state, e.cause, e.notify) for e in book.discharge(2000)], book.open_alerts()
        ([('resolved', 'discharged', False)], [])
        """
        t = self._time(now_ms)
        events: list[AlertEvent] = []
        self._snoozed = _NO_SNOOZES
        for slot, a in list(self._by_slot.items()):
            was_active = a.active
            a.episodes.clear()
            if not was_active:
                if a.revision < 0:
                    del self._by_slot[slot]
                continue
            a.state = "resolved"
            a.resolved_ms = self._found_ms
            a.next_notify_ms = a.high_since_ms = None
            events.append(self._emit(a, "discharged", False, t, t))
        return events

    def tick(self, now_ms: int) -> list[AlertEvent]:
        """Time passes: ended snoozes, escalations and reminders that are due, expired hold-offs."""
        t = self._time(now_ms)
        events = self._advance(t)
        p = self.policy
        for a in self._by_slot.values():
            if not a.active or a.state == "acknowledged":
                continue
            due = a.next_notify_ms is not None and t >= a.next_notify_ms and a.last.kind not in self._snoozed
            if (
                a.high_since_ms is not None
                and not a.escalated
                and a.last.audience.value in p.escalate_audiences
                and p.escalate_high_after_ms
                and t >= a.high_since_ms + p.escalate_high_after_ms
            ):
                a.escalated = True
                if due:
                    self._advance_schedule(a, t)
                events.append(self._emit(a, "escalated", True, t, t))
            elif due:
                self._advance_schedule(a, t)
                events.append(self._emit(a, "renotify", True, t, t))
        return events

    def advance_clock(self, now_ms: int) -> None:
        """Time passes with nothing due (:meth:`next_due_ms` after ``now_ms``): what :meth:`tick` would do then,
        moving the book's clock (time never goes backwards), without looking for anything due."""
        if now_ms > self._last_ms:
            self._last_ms = now_ms

    def next_due_ms(self) -> int | None:
        """The earliest ``now_ms`` at which :meth:`tick` could emit or change something (an ending snooze,
        an escalation, a reminder, a hold-off to expire), or None: nothing until the next finding or command.

        Never later than necessary (earlier is allowed), so a caller may skip the ticks before it and get
        exactly the events and states of ticking all along. Ask again after every call that changes the
        book. The book acts at its own clock when that is later than ``now_ms`` (time never goes
        backwards): something due by then is reported as due at any time (:data:`DUE_NOW`).

        >>> from detectors.base import Audience, Finding, Priority
        >>> book = AlertBook("p-1")
        >>> book.next_due_ms() is None
        True
        >>> _ = book.on_finding(Finding("glucose_urgent_low", "glucose", Priority.HIGH, Audience.CLINICAL,
        ...                             ts_ms=600_000, onset_ms=600_000, source="rule", message="low"))
        >>> book.next_due_ms() == 600_000 + 5 * 60_000  # the first reminder
        True
        >>> book.tick(book.next_due_ms() - 1), [e.cause for e in book.tick(book.next_due_ms())]
        ([], ['renotify'])
        """
        p = self.policy
        due: int | None = None
        for kind in self._snoozed:
            at = self._snooze_end(kind)
            if due is None or at < due:
                due = at
        for a in self._by_slot.values():
            if (a.state == "resolved" and not a.episodes and a.resolved_ms is not None
                    and self._found_ms >= a.resolved_ms + p.holdoff_ms(a.priority)):
                return DUE_NOW  # forgotten at the next call
            if not a.active or a.state == "acknowledged":
                continue
            if a.next_notify_ms is not None and a.last.kind not in self._snoozed:
                at = a.next_notify_ms
                if due is None or at < due:
                    due = at
            if (a.high_since_ms is not None and not a.escalated and a.last.audience.value in p.escalate_audiences
                    and p.escalate_high_after_ms):
                at = a.high_since_ms + p.escalate_high_after_ms
                if due is None or at < due:
                    due = at
        if due is not None and due <= self._last_ms:
            return DUE_NOW
        return due

    # -- internals ------------------------------------------------------------------
    def _time(self, now_ms: int) -> int:
        if now_ms > self._last_ms:
            self._last_ms = now_ms
        return self._last_ms

    def _add_episode(self, a: _Alert, finding: Finding) -> None:
        a.episodes[finding.onset_ms] = finding
        while len(a.episodes) > self.policy.max_episodes:
            del a.episodes[min(a.episodes)]

    def _snooze_end(self, kind: str) -> int:
        start, until, _by = self._snoozed[kind]
        high = kind in self.policy.high_kinds or any(
            (a.episodes or a.active) and a.priority == "high" for a in self._of_kind(kind)
        )
        cap = self.policy.snooze_cap_high_ms if high else self.policy.snooze_max_ms
        return min(until, start + cap)

    def _advance(self, t: int) -> list[AlertEvent]:
        """End snoozes whose time has come (book clock ``t``) and forget resolved alerts past their
        hold-off (findings' clock)."""
        events: list[AlertEvent] = []
        for kind in [k for k in self._snoozed if t >= self._snooze_end(k)]:
            del self._snoozed[kind]
            events += self._end_snooze(kind, t)
        for slot in [
            k
            for k, a in self._by_slot.items()
            if a.state == "resolved"
            and not a.episodes
            and a.resolved_ms is not None
            and self._found_ms >= a.resolved_ms + self.policy.holdoff_ms(a.priority)
        ]:
            retired = self._own_retired()
            retired.append(self._by_slot.pop(slot).alert_id)
            del retired[:-_RETIRED_KEPT]
        return events

    def _of_kind(self, kind: str) -> list[_Alert]:
        return [a for a in self._by_slot.values() if a.last.kind == kind]

    def _end_snooze(self, kind: str, t: int) -> list[AlertEvent]:
        events: list[AlertEvent] = []
        for a in self._of_kind(kind):
            if a.pending:
                events.append(self._announce(a, t, t))
            elif a.active:
                unacked = a.state != "acknowledged"
                if unacked:
                    self._schedule(a, t)
                events.append(self._emit(a, "snooze_ended", unacked, t, t))
        return events

    def _announce(self, a: _Alert, t: int, ts_ms: int) -> AlertEvent:
        """First event of a new alert, or the re-opening of a resolved one within its hold-off."""
        reopen = a.revision >= 0
        a.priority, a.last = a.top_priority(), a.top_finding()
        if reopen:
            a.resolved_ms = None
            self._unack(a, t)
        else:
            a.state = "open"
            self._schedule(a, t)
            a.high_since_ms = t if a.priority == "high" else None
        return self._emit(a, "reopened" if reopen else "onset", True, t, ts_ms)

    def _unack(self, a: _Alert, t: int) -> None:
        """The alert changed: it needs (again) an acknowledgement; restart reminders and the escalation clock."""
        a.state = "updated"
        a.acked_by = a.acked_ms = None
        self._schedule(a, t)
        a.high_since_ms = t if a.priority == "high" else None

    def _schedule(self, a: _Alert, t: int) -> None:
        interval = self.policy.renotify_ms(a.priority)
        a.next_notify_ms = t + interval if interval else None

    def _advance_schedule(self, a: _Alert, t: int) -> None:
        """Next reminder on the drift-free grid (due + k·interval), strictly after t."""
        interval = self.policy.renotify_ms(a.priority)
        if not interval or a.next_notify_ms is None:
            a.next_notify_ms = None
            return
        a.next_notify_ms += ((t - a.next_notify_ms) // interval + 1) * interval

    def _route(self, a: _Alert) -> AlertRoute:
        if a.last.audience is Audience.DEVICE:
            return "device"
        return "charge_nurse" if a.escalated else "clinical"

    def _emit(self, a: _Alert, cause: AlertCause, notify: bool, t: int, ts_ms: int) -> AlertEvent:
        a.revision += 1
        if notify:
            a.notified += 1
        a.cause, a.notify, a.emitted_ms, a.ts_ms = cause, notify, t, ts_ms
        return self._event(a)

    def _event(self, a: _Alert) -> AlertEvent:
        f = a.last
        kind = f.kind
        snoozed = kind in self._snoozed
        return AlertEvent(
            alert_id=a.alert_id,
            revision=a.revision,
            state=a.state,
            patient_id=self.patient_id,
            signal=f.signal,
            kind=kind,
            priority=a.priority,
            audience=f.audience.value,
            source=f.source,
            message=f.message,
            ts_ms=a.ts_ms,
            onset_ms=a.onset_ms,
            emitted_ms=a.emitted_ms,
            explanation=f.explanation(),
            ward=self.ward,
            audience_route=self._route(a),
            cause=a.cause,
            notify=a.notify,
            notified=a.notified,
            escalated=a.escalated,
            acked_by=a.acked_by,
            acked_ms=a.acked_ms,
            snoozed_until_ms=self._snooze_end(kind) if snoozed else None,
            snoozed_by=self._snoozed[kind][2] if snoozed else None,
            notes=tuple(AlertNote(by=b, ts_ms=ts, text=x) for b, ts, x in a.notes),
        )


def _restore_book(
    patient_id: str, ward: str | None, policy: LifecyclePolicy | None, alerts: dict[str, tuple[Any, ...]],
    snoozes: dict[str, tuple[int, int, str]], last_ms: int, retired: list[str], found_ms: int,
) -> AlertBook:
    """Inverse of :meth:`AlertBook.__reduce__`."""
    book = AlertBook(patient_id, ward, policy)
    book._alerts = {slot: _Alert.from_state(a) for slot, a in alerts.items()}
    book._snoozes = snoozes
    book._last_ms = last_ms
    book._retired = retired
    book._found_ms = found_ms
    return book
