"""The worker's view of the per-patient data keys (:mod:`wearwatch.datakeys`).

The detect agent opens sealed ``vitals.raw`` records with them and seals what it dead-letters of a patient; the
keys are followed from the ``datakeys`` topic in a thread started before the app (``streams.worker``; at the
first look-up otherwise). A reading whose key the follower has not seen makes the agent wait once for the
follower to read up to the topic's end (a new patient's key is written before their first reading); a key still
unknown then is gone and the reading is counted as ``erased``. Readiness (``/readyz``) includes ``datakeys``:
caught up with the topic. When the key store cannot be read at all the worker exits to be restarted
(:class:`WorkerKeys`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NoReturn

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from streams.monitor import RESTART_EXIT_CODE
from wearwatch.datakeys import DataKeys
from wearwatch.errors import StackUnavailable

if TYPE_CHECKING:
    from streams.app import Pipeline

__all__ = ["WorkerKeys", "follow_data_keys"]

log = logging.getLogger(__name__)


class WorkerKeys:
    """The worker's :class:`~wearwatch.datakeys.KeySource`: when the key store cannot be read (a key id to look
    up, a key to create, and Kafka does not answer) a reading can be neither processed nor dropped, so the worker
    exits for its supervisor to restart it; it then reads on from its last committed offsets."""

    def __init__(self, keys: DataKeys) -> None:
        self.keys = keys
        self._cipher = keys.ring.cipher  # the hot path: a known key without two calls in between

    def _started(self) -> None:
        """Start following the key store if the worker did not (an app built by ``create_app``)."""
        if self.keys.follower._thread.ident is None:
            log.warning("following %s only now: start it before the app", self.keys.settings.topic_datakeys)
            self.keys.start()
            self.keys.wait_ready(60.0)

    def cipher_for(self, patient_id: str) -> tuple[bytes, AESGCM]:
        self._started()
        try:
            return self.keys.cipher_for(patient_id)
        except StackUnavailable as exc:
            self._restart(exc)

    def ensure_keys(self, patient_ids: Iterable[str]) -> int:
        self._started()
        try:
            return self.keys.ensure_keys(patient_ids)
        except StackUnavailable as exc:
            self._restart(exc)

    def cipher_of(self, key_id: bytes) -> AESGCM | None:
        cipher = self._cipher(key_id)
        if cipher is not None:
            return cipher
        self._started()
        try:
            return self.keys.cipher_of(key_id)
        except StackUnavailable as exc:
            self._restart(exc)

    def _restart(self, exc: StackUnavailable) -> NoReturn:
        log.error("%s; exiting with code %d so the supervisor restarts this worker", exc, RESTART_EXIT_CODE)
        logging.shutdown()
        os._exit(RESTART_EXIT_CODE)


def follow_data_keys(pipeline: Pipeline) -> DataKeys:
    """Give the pipeline's processor the data keys (started by ``wearwatch worker`` before the app, so that no
    record is taken before they can be looked up; stopped with the app)."""
    keys = DataKeys(pipeline.settings, recreate_erased=False)
    pipeline.processor.keys = WorkerKeys(keys)
    app = pipeline.app

    async def on_shutdown(sender: Any, *args: Any, **kwargs: Any) -> None:
        keys.stop()

    app.on_before_shutdown.connect(on_shutdown)  # type: ignore[arg-type]
    pipeline.telemetry.readiness.register("datakeys", keys.ready)
    return keys
