"""The locked screen's ward-level alarm counts, kept per ward as patients' open alerts change.

``GET /api/alarm-status`` is polled every 2 s by every locked screen; counting it by walking every
patient with open alerts cost the whole fleet per poll. :class:`WardAlarms` holds, per ward, how many
alerts need someone by priority (:func:`console.views.needs_action`), updated when a patient's
``alerts.state`` record changes (alerts opened, updated, acknowledged, snoozed or closed; the patient
moved to another ward; the patient erased). An answer then costs the wards asked for, plus their snoozed
alerts: whether a snoozed alert needs someone depends on the time asked, so those are kept one by one
and compared with it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from console.views import Scope
from wearwatch.contract.priority import PRIORITIES, priority_rank

__all__ = ["WardAlarms"]

_ACTIVE = ("open", "updated")

#: what one patient adds to their ward: alerts that need someone by priority slot, and the snoozed ones
#: as (snoozed until, priority slot), which need someone again from that time on
_Share = tuple[tuple[int, ...], tuple[tuple[int, int], ...]]


def _share(alerts: Iterable[Mapping[str, Any]]) -> _Share:
    counts = [0] * len(PRIORITIES)
    snoozed: list[tuple[int, int]] = []
    for ev in alerts:
        prio = ev.get("priority")
        slot = priority_rank(prio) if isinstance(prio, str) else len(PRIORITIES)  # a priority's place in the counts
        if slot == len(PRIORITIES) or ev.get("state") not in _ACTIVE:
            continue
        until = ev.get("snoozed_until_ms")
        if isinstance(until, int):  # the same test as needs_action's
            snoozed.append((until, slot))
        else:
            counts[slot] += 1
    return tuple(counts), tuple(snoozed)


class _Ward:
    __slots__ = ("counts", "shares", "snoozed")

    def __init__(self) -> None:
        self.counts = [0] * len(PRIORITIES)  # the not-snoozed alerts of all its patients
        self.shares: dict[str, _Share] = {}
        self.snoozed: dict[str, tuple[tuple[int, int], ...]] = {}  # patients with snoozed alerts only


class WardAlarms:
    """Per ward, the alerts that need someone, by priority (see the module docs).

    >>> idx = WardAlarms()
    >>> idx.update("p-1", None, "3B", [{"state": "open", "priority": "high"},
    ...                                {"state": "open", "priority": "low", "snoozed_until_ms": 100}])
    >>> [list(idx.counts(frozenset({"3B"}), t).values()) for t in (50, 100)]  # high, medium, low
    [[1, 0, 0], [1, 0, 1]]
    >>> idx.update("p-1", "3B", "ICU", [{"state": "updated", "priority": "medium"}])  # moved to another ward
    >>> list(idx.counts(frozenset({"3B"}), 0).values()), list(idx.counts(None, 0).values()), idx.wards()
    ([0, 0, 0], [0, 1, 0], ['ICU'])
    >>> idx.update("p-1", "ICU", "ICU", [{"state": "acknowledged", "priority": "medium"}])  # acknowledged
    >>> list(idx.counts(None, 0).values()), idx.wards()
    ([0, 0, 0], [])
    """

    def __init__(self) -> None:
        self._wards: dict[str, _Ward] = {}

    def update(self, patient_id: str, old_ward: str | None, new_ward: str | None,
               alerts: Iterable[Mapping[str, Any]]) -> None:
        """The patient's open alerts are now ``alerts`` in ``new_ward`` (None: they have none any more);
        ``old_ward`` is where they were counted until now (None: nowhere)."""
        if old_ward is not None:
            self._remove(patient_id, old_ward)
        if new_ward is not None:
            share = _share(alerts)
            if any(share[0]) or share[1]:
                ward = self._wards.get(new_ward)
                if ward is None:
                    ward = self._wards[new_ward] = _Ward()
                ward.shares[patient_id] = share
                for i, n in enumerate(share[0]):
                    ward.counts[i] += n
                if share[1]:
                    ward.snoozed[patient_id] = share[1]

    def _remove(self, patient_id: str, ward_name: str) -> None:
        ward = self._wards.get(ward_name)
        share = ward.shares.pop(patient_id, None) if ward is not None else None
        if ward is None or share is None:
            return
        for i, n in enumerate(share[0]):
            ward.counts[i] -= n
        ward.snoozed.pop(patient_id, None)
        if not ward.shares:
            del self._wards[ward_name]

    def counts(self, scope: Scope, now_ms: int) -> dict[str, int]:
        """Alerts of the wards in ``scope`` (None: every ward) that need someone at ``now_ms``, by priority."""
        wards = self._wards.values() if scope is None else (w for n in scope if (w := self._wards.get(n)) is not None)
        totals = [0] * len(PRIORITIES)
        for ward in wards:
            for i, n in enumerate(ward.counts):
                totals[i] += n
            for snoozed in ward.snoozed.values():
                for until, slot in snoozed:
                    if until <= now_ms:
                        totals[slot] += 1
        return dict(zip(PRIORITIES, totals, strict=True))

    def wards(self) -> list[str]:
        """The wards with an alert that needs someone now or once its snooze ends (sorted)."""
        return sorted(self._wards)
