"""The shared contract: the small rules every package agrees on, in one place each.

Both sides of every wire import from here — the gateway (``ingest``) and the
alert side (``alerts``) never import each other:

* :mod:`~wearwatch.contract.ids` — patient, ward, device, vendor, nurse and alert id patterns;
* :mod:`~wearwatch.contract.times` — the one RFC 3339 / epoch-milliseconds parser and its policy;
* :mod:`~wearwatch.contract.units` — signals, units, the mmol/L → mg/dL factor;
* :mod:`~wearwatch.contract.codes` — LOINC codes and UCUM units (FHIR in and out);
* :mod:`~wearwatch.contract.priority` — alert priorities and their order;
* :mod:`~wearwatch.contract.commands` — the nurse commands (acknowledge, snooze): payloads,
  validation, MQTT topics and ``alerts.commands`` records.

The device payload and the Kafka records built from it (``vitals.raw``,
``vitals.dlq``) stay with the gateway in :mod:`ingest.contract`; the machine-readable
form of all of it is the AsyncAPI document (``docs/asyncapi.yaml``, ``wearwatch contract``).
"""

from __future__ import annotations

__all__: list[str] = []
