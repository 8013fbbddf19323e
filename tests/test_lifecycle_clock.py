"""The alert book's finding-driven events do not depend on when the worker's tick ran.

The worker ticks every patient's book with *stream-equivalent* time (the newest reading
of any signal plus the wall time since it arrived). Offline replay never ticks. Whether
a new onset re-opens a resolved alert (same id, cause ``reopened``) or opens a new one
(``onset``) must not depend on ticks: it is decided by the findings' own times, so the
worker and the offline replay give the same alerts whatever the batch timing was.
(Seen in the worker fail-over test: extra ``onset`` opens where the offline replay had
``reopened``, after a tick at a heart-rate reading's time — ahead of a late glucose
finding — had retired the resolved alert.)
"""

from __future__ import annotations

from alerts.lifecycle import AlertBook
from alerts.models import AlertEvent
from tests.test_lifecycle import MIN, PID, T0, clear, finding


def _sig(events: list[AlertEvent]) -> list[tuple[str, str | None]]:
    return [(e.state, e.cause) for e in events if e.cause not in ("renotify", "escalated")]


def _run(tick_at: list[int]) -> list[tuple[str, str | None]]:
    book = AlertBook(PID, ward="3B")
    events = book.on_finding(finding())  # urgent low at T0
    events += book.on_finding(clear(ts=T0 + 10 * MIN))  # resolved at +10 min; hold-off 15 min
    for t in tick_at:  # e.g. heart-rate readings already at +26 min: the tick's stream time
        events += book.tick(t)
    events += book.on_finding(finding(onset=T0 + 24 * MIN))  # a glucose finding that arrived late
    return _sig(events)


def test_a_tick_ahead_of_a_late_finding_does_not_turn_a_reopen_into_a_new_alert() -> None:
    offline = _run([])
    assert offline == [("open", "onset"), ("resolved", "cleared"), ("updated", "reopened")]
    assert _run([T0 + 26 * MIN]) == offline
    assert _run([T0 + 12 * MIN, T0 + 20 * MIN, T0 + 26 * MIN, T0 + 40 * MIN]) == offline


def test_the_hold_off_still_ends_by_the_findings_time() -> None:
    book = AlertBook(PID, ward="3B")
    first = book.on_finding(finding())
    book.on_finding(clear(ts=T0 + 10 * MIN))
    book.tick(T0 + 60 * MIN)
    later = book.on_finding(finding(onset=T0 + 26 * MIN))  # 16 min after resolution: past the hold-off
    assert _sig(later) == [("open", "onset")]
    assert later[0].alert_id != first[0].alert_id
    assert len(book) == 1  # the resolved alert was forgotten
