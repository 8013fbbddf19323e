"""The live enrolment in the worker: wards, detector overrides and discharges applied without a restart.

Every worker follows the compacted ``enrollment`` topic from its beginning
(:class:`wearwatch.enrollment_topic.EnrollmentFollower`, one small partition) into the
pipeline's :class:`~alerts.enrollment.Enrollment`. New patients get their ward and overrides
when their state is created; for patients whose state this worker already holds (its
partitions), a timer applies each change under the state lock, like a batch of readings:

* **ward**: the alert book's ward changes; the next events carry it, the patient's
  ``alerts.state`` record is written again and the retained MQTT state moves to the new
  ward's topic;
* **overrides**: the detectors keep what they learned and judge from now on with the new
  thresholds (:func:`reconfigured`);
* **discharge**: every open alert resolves with cause ``discharged``; from then on the
  patient's readings go to ``vitals.dlq`` with reason ``not_enrolled``
  (:attr:`streams.processing.BatchProcessor.admits`), as do those of patients never
  enrolled when ``WEARWATCH_REQUIRE_ENROLLMENT`` is set;
* **erasure** (the patient's tombstone, ``wearwatch patients erase``): the patient's state is
  dropped and a tombstone written to the changelog, and to ``alerts.state``, and the retained
  MQTT alert state is deleted; compaction then removes what the tombstones replace
  (``WEARWATCH_ERASURE_COMPACTION_HOURS``).

Each record is a patient's whole enrolment, so applying one twice changes nothing: a worker
that starts, or gets a partition, reads the topic again and applies only what differs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, cast

from detectors import PatientMonitor
from detectors.config import DetectorConfig
from detectors.episodes import config_diff
from streams.processing import Outputs
from streams.state import PatientState
from wearwatch.contract.enrollment import EnrollmentRecord
from wearwatch.enrollment_topic import EnrollmentFollower
from wearwatch.errors import ConfigError

if TYPE_CHECKING:
    from streams.app import Pipeline

__all__ = ["EnrollmentSync", "apply_enrollment", "differs", "reconfigured"]

log = logging.getLogger(__name__)


def _wall_ms() -> int:
    return int(time.time() * 1000)


def reconfigured(monitor: PatientMonitor, config: DetectorConfig) -> PatientMonitor:
    """``monitor`` with ``config`` instead of its own, everything it learned kept.

    The monitor pickles as its config's differences plus each part's state; the same parts
    are rebuilt here around the new config (what unpickling does), so baselines, episodes
    and the readings' history carry over and only the thresholds change.

    >>> m = PatientMonitor()
    >>> for i, v in enumerate([120.0, 110.0, 100.0]):
    ...     _ = m.update("glucose", i * 300_000, v)
    >>> m2 = reconfigured(m, DetectorConfig().with_overrides({"glucose_urgent_low_mgdl": 110}))
    >>> m2.config.glucose_urgent_low_mgdl, [f.kind for f in m2.update("glucose", 900_000, 95.0)][:1]
    (110.0, ['glucose_urgent_low'])
    """
    restore, args = monitor.__reduce__()[:2]
    rebuilt: PatientMonitor = restore(config_diff(config), *args[1:])
    return rebuilt


def apply_enrollment(st: PatientState, ward: str, config: DetectorConfig, discharged: bool,
                     stream_now: int) -> tuple[list[Any], str | None]:
    """Bring one patient's state in line with their enrolment: (alert events, the ward it left or None)."""
    book = st.book
    left: str | None = None
    if book.ward != ward:
        left = book.ward or "unassigned"
        book.ward = ward
    if st.monitor.config != config:
        st.monitor = reconfigured(st.monitor, config)
    events = book.discharge(stream_now) if discharged else []
    return events, left


def differs(st: PatientState, ward: str, config: DetectorConfig, discharged: bool) -> bool:
    """Whether the state disagrees with the enrolment (only then is it changed, and so written again)."""
    book = st.book
    return (book.ward != ward or st.monitor.config != config
            or (discharged and bool(book.open_alerts() or book.snoozes())))


class EnrollmentSync:
    """Follows the enrolment for a :class:`~streams.app.Pipeline` and applies changes to its patients."""

    #: how often changes are applied to the patients' states (seconds)
    INTERVAL_S = 0.5

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        s = pipeline.settings
        enrollment = pipeline.enrollment
        require = s.require_enrollment
        pipeline.processor.admits = lambda pid: enrollment.admits(pid, require)
        self._changed: set[str] = set()
        #: patients whose tombstone was read (erased) and not enrolled again since
        self._erased: set[str] = set()
        self.erasures = 0
        self._lock = threading.Lock()
        self.applied = 0
        self.follower = EnrollmentFollower(s, self._on_record)
        app = pipeline.app

        @app.task
        async def follow_enrollment() -> None:
            self.follower.start()

        @app.timer(interval=self.INTERVAL_S)
        async def apply_enrollment_changes() -> None:
            await self.apply_changes()

        async def on_shutdown(sender: Any, *args: Any, **kwargs: Any) -> None:
            self.follower.stop()

        app.on_before_shutdown.connect(on_shutdown)  # type: ignore[arg-type]

    def _on_record(self, patient_id: str, record: EnrollmentRecord | None) -> None:
        """In the follower's thread: update the roster, remember the patient for the next apply."""
        try:
            self.pipeline.enrollment.apply(patient_id, record)
        except ConfigError as exc:
            log.warning("skipped an enrollment record: %s", str(exc).split(":", 1)[-1].strip())
            return
        with self._lock:
            self._changed.add(patient_id)
            if record is None:
                self._erased.add(patient_id)
            else:
                self._erased.discard(patient_id)

    async def apply_changes(self) -> None:
        """Apply the changes seen since the last call to the patients whose state this worker holds."""
        p = self.pipeline
        if not p.serving or not self._changed:
            return  # mid-rebalance the states may be half recovered: the changes wait
        with self._lock:
            changed, self._changed = self._changed, set()
            erased, self._erased = self._erased & changed, self._erased - changed
        proc, enrollment = p.processor, p.enrollment
        moved: list[tuple[str, str]] = []
        cleared: list[tuple[str, str]] = []
        async with p.state_lock:
            now = _wall_ms()
            out = Outputs()
            touched = 0
            for pid in changed:
                if not proc.holds(pid) and p.table.get(pid.encode()) is None:
                    continue  # not this worker's patient, or no state yet (created with the enrolment)
                if pid in erased:
                    cleared.append((pid, await self._erase(pid)))
                    continue
                ward, config = enrollment.ward_for(pid), enrollment.detector_config_for(pid)
                discharged = enrollment.status_for(pid) == "discharged"
                if not differs(proc.view(pid), ward, config, discharged):
                    continue  # e.g. the whole roster read again at start: the state already agrees
                st = proc.state_for(pid)
                stream_now = proc.stream_now(pid, now)
                events, left = apply_enrollment(st, ward, config, discharged, stream_now)
                proc._events(out, events, now)
                proc.mark_changed(pid)
                p.resync_alert_state(pid)  # its alerts.state record is written again (new ward)
                if left is not None:
                    moved.append((pid, left))
                touched += 1
            await p.emit(out)
        self.applied += touched
        if touched:
            log.info("enrollment: %d change(s) applied to patient states, %d alert(s) closed by discharge",
                     touched, sum(1 for ev in out.events if ev.cause == "discharged"))
        self._move_retained(moved)
        if cleared:
            self.erasures += len(cleared)
            publisher = p._publisher()
            if publisher is not None:
                for pid, ward in cleared:
                    publisher.clear_state(ward, pid)
            log.info("erasure: %d patient state(s) erased (changelog and alerts.state tombstones written)",
                     len(cleared))

    async def _erase(self, patient_id: str) -> str:
        """Drop the patient's state (under the state lock) and write its tombstones; the ward it was in."""
        p, proc = self.pipeline, self.pipeline.processor
        key = patient_id.encode()
        ward = proc.state_for(patient_id).book.ward or "unassigned"
        proc.discard(patient_id)  # its state, decoded or packed, and its bookkeeping with its synced flag
        p._state_unsynced.pop(patient_id, None)
        with contextlib.suppress(KeyError):
            del p.table.data[key]  # the store only: the tombstone goes out with the state producer, as states do
        await p._send_changelog(cast(list[tuple[bytes, bytes]], [(key, None)]))
        pending = await p.records_out.send(p.settings.topic_alert_state, cast(list[tuple[bytes, bytes]], [(key, None)]))
        await asyncio.gather(*pending)
        return ward

    def _move_retained(self, moved: list[tuple[str, str]]) -> None:
        """Retained MQTT alert state of patients who changed ward: cleared under the old ward, published
        under the new one (an app watching the new ward sees what is open)."""
        if not moved:
            return
        publisher = self.pipeline._publisher()
        if publisher is None:
            return
        proc = self.pipeline.processor
        for pid, old in moved:
            book = proc.state_for(pid).book
            publisher.clear_state(old, pid)
            open_ = book.open_alerts()
            if open_:
                publisher.publish_state(book.ward or "unassigned", pid, open_, _wall_ms())
