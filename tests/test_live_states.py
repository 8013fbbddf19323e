"""A worker that keeps at most ``live_states`` states decoded (``BatchProcessor(live_states=N)``) gives exactly the
events, minute aggregates and patient states of one that keeps every patient's: a dropped state is written first,
its bookkeeping stays, and it is read back from the table when a reading, a command or the tick needs it."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.processing import BatchProcessor
from streams.state import PatientState
from streams.state_codec import decode_state, encode_state
from tests import test_tick_schedule as schedule
from tests.test_tick_schedule import PIDS, STEP, Twin, _silence_then_data


class Capped(Twin):
    """``every`` keeps every state; ``due`` keeps at most ``cap`` from one commit to the next. Both tick only the
    patients due (the two ways of ticking are compared in ``test_tick_schedule.py``). A bounded cache writes the
    states it drops sooner, so the two write different states at a commit: :meth:`check_states` compares what
    each would meet next instead."""

    EVERY_TICKS_ALL = False
    SAME_WRITES = False

    def __init__(self, write_readings: int, cap: int) -> None:
        super().__init__(write_readings, live_states=cap)

    def _current(self, name: str, proc: BatchProcessor, pid: str) -> bytes:
        """The patient's state as its next use would meet it (cached, or read from the table), its book's clock
        caught up with the last round of the tick (what that use does first), in its stored form."""
        cached: PatientState | None = proc.cache.get(pid)
        copy = decode_state(encode_state(cached) if cached is not None else self.stored[name][pid])
        received = proc.last_received.get(pid)
        if proc.round_seen(pid) != proc.rounds and received is not None and copy.book is not None:
            copy.book.advance_clock(copy.newest_ms + (proc._round_ms - received))
        return encode_state(copy)

    def check_states(self) -> None:
        every, due = self.every, self.due
        held = {pid for pid in PIDS if every.holds(pid)}
        assert held == {pid for pid in PIDS if due.holds(pid)}
        assert every.last_received == due.last_received
        for pid in held:
            assert self._current("every", every, pid) == self._current("due", due, pid), pid


def _run(steps: list[tuple[str, Any]], write_readings: int, cap: int) -> Capped:
    # the second round at the end leaves nobody heard from since the one before: all above the cap go
    twin = Capped(write_readings, cap)
    schedule._run(steps, write_readings, twin, end_rounds=2)
    return twin


#: a restart drops what was not written, and a bounded cache writes states sooner (the ones it drops), so after
#: a restart the two would hold different states until Kafka gave them the same records again, which these
#: tests do not replay: a restart here is a commit, and the scenario test restarts without write pacing
STEPS = STEP.map(lambda step: ("commit", None) if step[0] == "restart" else step)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(STEPS, min_size=5, max_size=60), write_readings=st.sampled_from([0, 4]),
       cap=st.sampled_from([1, 2]))
def test_a_bounded_cache_gives_what_keeping_every_state_gives(steps: list[tuple[str, Any]], write_readings: int,
                                                               cap: int) -> None:
    twin = _run(steps, write_readings, cap)
    # beyond the cap only patients loaded or heard from since the last round (their due times still to come)
    assert len(twin.due.cache) <= cap + len(twin.due._moved | twin.due._read)
    for pid in PIDS:  # each patient's events in the same order
        assert [e for e in twin.events["every"] if e.patient_id == pid] == [
            e for e in twin.events["due"] if e.patient_id == pid]


def test_dropped_states_are_read_back_for_readings_commands_and_the_tick() -> None:
    # the scenario of test_tick_schedule: reminders, escalations, stale sensors, idle minutes, an
    # acknowledgement, a snooze and a restart, with room for one state of four between commits
    steps = _silence_then_data(8, 30_000)
    steps[1:1] = [("command", (0, 0, 0, 0)), ("command", (1, 2, 0, 200)), ("commit", None)]
    steps.append(("restart", None))
    steps += _silence_then_data(4, 121_000)
    steps = [s for step in steps for s in (step, ("commit", None))]  # states dropped between any two steps
    twin = _run(steps, write_readings=0, cap=1)
    due = twin.due
    assert due.stats["states_dropped"] > 0 and due.stats["states_reloaded"] > 0
    assert twin.every.stats["states_dropped"] == twin.every.stats["states_reloaded"] == 0
    # the patients left above the cap are those the last round ticked into new events (renotified alerts)
    assert len(twin.every.cache) == len(PIDS) and sum(due.holds(pid) for pid in PIDS) == len(PIDS)
    assert 1 <= len(due.cache) <= 1 + len(due._moved | due._read)
    causes = {(ev.kind, ev.cause) for ev in twin.events["due"]}
    for want in [("glucose_urgent_low", "onset"), ("glucose_urgent_low", "renotify"),
                 ("glucose_urgent_low", "escalated"), ("glucose_urgent_low", "acknowledged"),
                 ("sensor_stale", "onset")]:
        assert want in causes, want
    assert len(twin.events["due"]) == len(twin.events["every"])
    for pid in PIDS:
        assert [e for e in twin.events["every"] if e.patient_id == pid] == [
            e for e in twin.events["due"] if e.patient_id == pid]


def test_a_quiet_fleet_is_held_to_the_cap_and_a_dropped_patient_is_read_back_as_it_was() -> None:
    twin = Capped(write_readings=4, cap=1)
    twin.readings([(p, "heart_rate", 1, 5_000) for p in range(len(PIDS))])
    twin.commit()
    assert len(twin.due.cache) == len(PIDS)  # all heard from since the last round: kept
    for _ in range(2):  # the first round (a full one) schedules them; nothing is due at the second
        twin.now += 5_000
        twin.tick()
    twin.commit()
    twin.check_states()
    due = twin.due
    assert len(due.cache) == 1 and due.stats["states_dropped"] == len(PIDS) - 1
    assert all(due.holds(pid) and (pid in due.cache or pid in twin.stored["due"]) for pid in PIDS)
    dropped = next(pid for pid in PIDS if pid not in due.cache)
    twin.now += 1_000
    twin.readings([(PIDS.index(dropped), "heart_rate", 1, 5_000)])
    assert dropped in due.cache and due.stats["states_reloaded"] == 1
    twin.check_states()
    assert len(due.cache) == 2  # until the next round and commit
    twin.now += 5_000
    twin.tick()
    twin.commit()
    twin.check_states()
    assert len(due.cache) == 1
