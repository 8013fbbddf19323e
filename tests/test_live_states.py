"""A worker that keeps at most ``live_states`` states decoded (``BatchProcessor(live_states=N)``) gives exactly the
events, minute aggregates, written states and commits of one that keeps every patient's: past the bound a state is
packed in memory (its stored form) with its bookkeeping, and decoded again when a reading, a command or the tick
needs it."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.processing import PACKED_VERSION, BatchProcessor
from streams.state_codec import decode_state, encode_state, stored_version
from tests import test_tick_schedule as schedule
from tests.test_tick_schedule import PIDS, STEP, Twin, _silence_then_data


class Capped(Twin):
    """``every`` keeps every state decoded; ``due`` keeps at most ``cap`` decoded from one commit to the next. Both
    tick only the patients due (the two ways of ticking are compared in ``test_tick_schedule.py``), and both must
    write the same states at every commit (:attr:`Twin.SAME_WRITES`)."""

    EVERY_TICKS_ALL = False

    def __init__(self, write_readings: int, cap: int) -> None:
        super().__init__(write_readings, live_states=cap)

    @staticmethod
    def _current(proc: BatchProcessor, pid: str) -> bytes:
        """The patient's state as its next use would meet it (decoded, packed, or read from the table), its book's
        clock caught up with the last round of the tick (what that use does first), in its stored form."""
        copy = decode_state(encode_state(proc.view(pid)))  # a copy: checking must not change the next step
        received = proc.last_received.get(pid)
        if proc.round_seen(pid) != proc.rounds and received is not None and copy.book is not None:
            copy.book.advance_clock(copy.newest_ms + (proc._round_ms - received))
        return encode_state(copy)

    def check_states(self) -> None:
        every, due = self.every, self.due
        assert set(every.held()) == set(due.held())
        assert not every.packed
        assert every.dirty | every.waiting == due.dirty | due.waiting and every.urgent == due.urgent
        assert every.unwritten == due.unwritten and every.last_received == due.last_received
        held = {pid for pid in PIDS if every.holds(pid)}
        assert held == {pid for pid in PIDS if due.holds(pid)}
        for pid in held:
            assert self._current(every, pid) == self._current(due, pid), pid


def _run(steps: list[tuple[str, Any]], write_readings: int, cap: int) -> Capped:
    # the second round at the end leaves nobody heard from since the one before
    twin = Capped(write_readings, cap)
    schedule._run(steps, write_readings, twin, end_rounds=2)
    return twin


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(STEP, min_size=5, max_size=60), write_readings=st.sampled_from([0, 4]),
       cap=st.sampled_from([1, 2]))
def test_a_bounded_cache_gives_what_keeping_every_state_gives(steps: list[tuple[str, Any]], write_readings: int,
                                                               cap: int) -> None:
    twin = _run(steps, write_readings, cap)  # the same states written at every commit, restarts included
    assert len(twin.due.cache) <= cap  # after a commit: the rest is packed
    assert all(stored_version(blob) == PACKED_VERSION for blob in twin.due.packed.values())
    for pid in PIDS:  # each patient's events in the same order
        assert [e for e in twin.events["every"] if e.patient_id == pid] == [
            e for e in twin.events["due"] if e.patient_id == pid]


def test_packed_states_are_decoded_for_readings_commands_and_the_tick() -> None:
    # the scenario of test_tick_schedule: reminders, escalations, stale sensors, idle minutes, an
    # acknowledgement, a snooze and a restart, with room for one state of four between commits
    steps = _silence_then_data(8, 30_000)
    steps[1:1] = [("command", (0, 0, 0, 0)), ("command", (1, 2, 0, 200)), ("commit", None)]
    steps.append(("restart", None))
    steps += _silence_then_data(4, 121_000)
    steps = [s for step in steps for s in (step, ("commit", None))]  # states packed between any two steps
    twin = _run(steps, write_readings=0, cap=1)
    due = twin.due
    assert due.stats["states_packed"] > 0 and due.stats["states_unpacked"] > 0
    assert twin.every.stats["states_packed"] == twin.every.stats["states_unpacked"] == 0
    assert len(twin.every.cache) == len(PIDS) and sum(due.holds(pid) for pid in PIDS) == len(PIDS)
    assert len(due.cache) == 1 and len(due.packed) == len(PIDS) - 1
    causes = {(ev.kind, ev.cause) for ev in twin.events["due"]}
    for want in [("glucose_urgent_low", "onset"), ("glucose_urgent_low", "renotify"),
                 ("glucose_urgent_low", "escalated"), ("glucose_urgent_low", "acknowledged"),
                 ("sensor_stale", "onset")]:
        assert want in causes, want
    assert len(twin.events["due"]) == len(twin.events["every"])
    for pid in PIDS:
        assert [e for e in twin.events["every"] if e.patient_id == pid] == [
            e for e in twin.events["due"] if e.patient_id == pid]


def test_a_fleet_is_held_to_the_cap_and_a_packed_patient_comes_back_as_it_was() -> None:
    twin = Capped(write_readings=4, cap=1)
    twin.readings([(p, "heart_rate", 1, 5_000) for p in range(len(PIDS))])
    due = twin.due
    assert len(due.cache) == len(PIDS) and not due.packed  # between commits the bound does not apply
    twin.commit()
    twin.check_states()
    # heard from since the last round or not, all but one are packed; their unwritten readings stay unwritten
    assert len(due.cache) == 1 and due.stats["states_packed"] == len(PIDS) - 1
    assert due.states_unwritten == len(PIDS) and not twin.stored["due"]
    packed = next(pid for pid in PIDS if pid not in due.cache)
    assert due.view(packed) is not due.view(packed) and packed in due.packed  # reading it leaves it packed
    twin.now += 1_000
    twin.readings([(PIDS.index(packed), "heart_rate", 1, 5_000)])
    assert packed in due.cache and packed not in due.packed and due.stats["states_unpacked"] == 1
    twin.check_states()
    assert len(due.cache) == 2  # until the next commit
    for _ in range(2):  # the first round (a full one) decodes every state; nothing is due at the second
        twin.now += 5_000
        twin.tick()
    twin.commit()
    twin.check_states()
    assert len(due.cache) == 1 and len(due.packed) == len(PIDS) - 1
    twin.now += 200_000  # past the write pacing's wait: every state is written, the packed ones as they are
    twin.tick()
    twin.commit()
    twin.check_states()
    assert set(twin.stored["due"]) == set(PIDS) and twin.stored["due"] == twin.stored["every"]


def test_an_erased_patient_leaves_nothing_packed() -> None:
    twin = Capped(write_readings=4, cap=1)
    twin.readings([(p, "heart_rate", 1, 5_000) for p in range(len(PIDS))])
    twin.commit()
    due = twin.due
    gone = next(iter(due.packed))
    due.discard(gone)
    assert gone not in due.packed and gone not in due.cache and not due.holds(gone) and gone not in due.held()
