"""The worker's view of the per-patient data keys (:mod:`wearwatch.datakeys`).

The detect agent opens sealed ``vitals.raw`` records with them and seals what it dead-letters of a patient; the
keys are followed from the ``datakeys`` topic in a thread that starts with the app. A reading whose key the
follower has not seen makes the agent wait once for the follower to read up to the topic's end (a new patient's
key is written before their first reading); a key still unknown then is gone and the reading is counted as
``erased``. Readiness (``/readyz``) includes ``datakeys``: caught up with the topic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from wearwatch.datakeys import DataKeys

if TYPE_CHECKING:
    from streams.app import Pipeline

__all__ = ["follow_data_keys"]


def follow_data_keys(pipeline: Pipeline) -> DataKeys:
    """Give the pipeline's processor the data keys, followed while the app runs."""
    keys = DataKeys(pipeline.settings, recreate_erased=False)
    pipeline.processor.keys = keys
    app = pipeline.app

    @app.task
    async def follow_datakeys() -> None:
        keys.start()

    async def on_shutdown(sender: Any, *args: Any, **kwargs: Any) -> None:
        keys.stop()

    app.on_before_shutdown.connect(on_shutdown)  # type: ignore[arg-type]
    pipeline.telemetry.readiness.register("datakeys", keys.ready)
    return keys
