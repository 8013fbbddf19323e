"""``wearwatch contract``: the machine-readable vendor and integration contract, as an AsyncAPI 3.0 document.

``docs/asyncapi.yaml`` describes every MQTT topic (device vitals and FHIR in, nurse
acknowledgements and snoozes in, alert state and notifications out) and every Kafka
topic (``vitals.raw``, ``vitals.dlq``, ``vitals.1m``, ``alerts``, ``alerts.state``, ``alerts.commands``,
``enrollment``)
with the JSON Schema of its payload. The schemas are generated from the pydantic
models the code itself validates and writes with (:class:`ingest.contract.DeviceReading`,
:class:`~ingest.contract.Reading`, :class:`~ingest.contract.DeadLetter`,
:class:`alerts.models.AlertEvent`, the command models of
:mod:`wearwatch.contract.commands`, and the message envelopes below), so the document
cannot say something the code does not do: ``tests/test_asyncapi.py`` fails when the
checked-in file differs from what this command writes, and validates real payloads
of the code against the schemas.

::

    wearwatch contract              # print the document
    wearwatch contract --write      # (re)write docs/asyncapi.yaml
    wearwatch contract --check      # exit 1 if docs/asyncapi.yaml is stale
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from alerts.models import AlertEvent
from ingest.contract import DeadLetter, DeviceReading, Reading, ReadingBatch
from tools.files import write_atomically
from wearwatch.contract.commands import Ack, AckPayload, Note, Snooze, SnoozePayload
from wearwatch.contract.enrollment import EnrollmentRecord
from wearwatch.contract.ids import PatientId, WardId
from wearwatch.errors import WearwatchError

__all__ = [
    "DEFAULT_PATH",
    "AckRecord",
    "AlertStateMessage",
    "MinuteAggregate",
    "MinutesRecord",
    "SnoozeRecord",
    "add_arguments",
    "asyncapi_document",
    "render",
    "run",
]

#: where the document lives in the repository
DEFAULT_PATH = Path(__file__).resolve().parents[1] / "docs" / "asyncapi.yaml"
_REF = "#/components/schemas/{model}"


# -- envelopes the code builds as plain JSON (their tests check the code's output against these) -----------------
class AlertStateMessage(BaseModel):
    """The retained alert state of one patient (``wearwatch/v1/alerts/{ward}/{patient_id}``): the open alerts.

    ``alerts`` is ``[]`` when nothing is open; an empty payload (not JSON) deletes the
    retained message when the patient leaves the ward. Ignore a state whose
    ``updated_ms`` is older than one already shown.
    """

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    patient_id: PatientId
    ward: WardId
    updated_ms: int
    alerts: list[AlertEvent]


class AckRecord(BaseModel):
    """An acknowledgement on Kafka ``alerts.commands`` (key = patient id)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["ack"]
    body: Ack


class SnoozeRecord(BaseModel):
    """A snooze on Kafka ``alerts.commands`` (key = patient id)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["snooze"]
    body: Snooze


class NoteRecord(BaseModel):
    """A note on an alert on Kafka ``alerts.commands`` (key = patient id; written by the console)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["note"]
    body: Note


class MinuteAggregate(BaseModel):
    """One closed minute of one signal of one patient (canonical units)."""

    model_config = ConfigDict(extra="forbid")

    patient_id: PatientId
    signal: Literal["heart_rate", "glucose", "steps"]
    minute_ms: int = Field(description="the minute's start, epoch milliseconds")
    mean: float
    min: float
    max: float
    sum: float
    count: int = Field(ge=1)


class MinutesRecord(BaseModel):
    """A ``vitals.1m`` record (schema 2): the closed minutes of the patients of one partition, packed.

    No key; in the partition each patient's key hashes to, so one patient's minutes stay in order.
    """

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[2] = 2
    minutes: list[MinuteAggregate] = Field(max_length=500)


_MODELS: tuple[type[BaseModel], ...] = (
    DeviceReading, AckPayload, SnoozePayload, AlertStateMessage, AlertEvent, Reading, ReadingBatch, DeadLetter,
    MinutesRecord, AckRecord, SnoozeRecord, NoteRecord, EnrollmentRecord,
)



#: how the transit topics' records are sealed (README, Erasure)
_SEALED = (" Sealed: each record value is an envelope of AES-256-GCM entries, one per patient under their data key"
           " (wearwatch/datakeys.py; records from before sealing are clear); the schema is an entry's plaintext")

def _schemas() -> dict[str, Any]:
    _, top = models_json_schema([(m, "validation") for m in _MODELS], ref_template=_REF)
    defs: dict[str, Any] = top.get("$defs", {})
    defs["DeviceReadings"] = {"type": "array", "items": {"$ref": _REF.format(model="DeviceReading")},
                              "minItems": 1, "description": "a batch of readings (after a Bluetooth re-sync); "
                              "at most WEARWATCH_MAX_BATCH_READINGS (5000), each checked on its own"}
    defs["FhirResource"] = {
        "type": "object", "required": ["resourceType"],
        "properties": {"resourceType": {"enum": ["Observation", "Bundle"]}},
        "description": "a FHIR R4 Observation, or a Bundle (batch, transaction, collection) of them; LOINC/UCUM "
                       "codes, subject Patient/{id} and time as in the README's FHIR table "
                       "(wearwatch.contract.codes)",
        "externalDocs": {"url": "https://hl7.org/fhir/R4/observation.html"},
    }
    return dict(sorted(defs.items()))


def _msg(name: str, schema: str, summary: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "title": name, "summary": summary, "contentType": "application/json",
            "payload": {"$ref": _REF.format(model=schema)}, **extra}


def _kafka_key(description: str) -> dict[str, Any]:
    return {"kafka": {"key": {"type": "string", "description": description}, "bindingVersion": "0.5.0"}}


_WARD = {"description": "the patient's ward (enrollment file; unassigned when not enrolled)"}
_PATIENT = {"description": "the patient's id"}


def asyncapi_document(version: str = "1") -> dict[str, Any]:
    """The whole AsyncAPI 3.0 document as a dict (``version``: the contract's, ``wearwatch/v1``)."""
    messages = {
        "DeviceReading": _msg("DeviceReading", "DeviceReading", "one reading from a device"),
        "DeviceReadings": _msg("DeviceReadings", "DeviceReadings", "an array of readings"),
        "FhirObservation": _msg("FhirObservation", "FhirResource", "a FHIR R4 Observation or Bundle",
                                contentType="application/fhir+json"),
        "Ack": _msg("Ack", "AckPayload", "a nurse acknowledged an alert"),
        "Snooze": _msg("Snooze", "SnoozePayload", "a nurse snoozed a kind of alert for a patient"),
        "AlertState": _msg("AlertState", "AlertStateMessage", "the patient's open alerts (retained)"),
        "AlertNotification": _msg("AlertNotification", "AlertEvent", "a notifying alert event (new, re-notified, "
                                  "escalated)"),
        "Reading": _msg("Reading", "Reading", "one normalized reading", bindings=_kafka_key("patient_id")),
        "ReadingBatch": _msg("ReadingBatch", "ReadingBatch", "readings of one partition's patients in one record",
                             bindings=_kafka_key("the first reading's patient_id")),
        "DeadLetter": _msg("DeadLetter", "DeadLetter", "a refused payload or reading with its reason",
                           bindings=_kafka_key("the MQTT topic (gateway), http:{vendor}:POST {Observation|Bundle} "
                                               "(FHIR HTTP, the token's vendor) or worker")),
        "Minutes": _msg("Minutes", "MinutesRecord", "closed 1-minute aggregates, packed per partition"),
        "AlertEvent": _msg("AlertEvent", "AlertEvent", "one alert state change",
                           bindings=_kafka_key("the event: alert_id:revision:state (one key per event, compacted "
                                               "for erasure); in the partition the patient_id hashes to")),
        "AckRecord": _msg("AckRecord", "AckRecord", "an acknowledgement for the worker",
                          bindings=_kafka_key("patient_id")),
        "SnoozeRecord": _msg("SnoozeRecord", "SnoozeRecord", "a snooze for the worker",
                             bindings=_kafka_key("patient_id")),
        "NoteRecord": _msg("NoteRecord", "NoteRecord", "a note on an alert for the worker",
                           bindings=_kafka_key("patient_id")),
        "AlertStateRecord": _msg("AlertStateRecord", "AlertStateMessage", "the patient's open alerts (compacted; "
                                 "a tombstone when none is open)", bindings=_kafka_key("patient_id")),
        "EnrollmentRecord": _msg("EnrollmentRecord", "EnrollmentRecord", "a patient's enrolment: ward, detector "
                                 "overrides, status (compacted; a tombstone when the patient is erased)",
                                 bindings=_kafka_key("patient_id")),
    }

    def ref(name: str) -> dict[str, str]:
        return {"$ref": f"#/components/messages/{name}"}

    mqtt, kafka = [{"$ref": "#/servers/mqtt"}], [{"$ref": "#/servers/kafka"}]
    device = {"vendor": {"description": "the vendor account (the broker's ACL allows only its own)"},
              "device_id": {"description": "the device"}}
    channels: dict[str, Any] = {
        "deviceVitals": {"address": "wearwatch/v1/vitals/{vendor}/{device_id}", "servers": mqtt,
                         "parameters": device, "messages": {"reading": ref("DeviceReading"),
                                                            "readings": ref("DeviceReadings")},
                         "description": "device readings, QoS 1; check a payload offline with `wearwatch validate`"},
        "deviceFhir": {"address": "wearwatch/v1/fhir/{vendor}/{device_id}", "servers": mqtt, "parameters": device,
                       "messages": {"observation": ref("FhirObservation")},
                       "description": "FHIR R4 Observations or Bundles, QoS 1 (`wearwatch validate --fhir`)"},
        "nurseAcks": {"address": "wearwatch/v1/acks/{ward}/{patient_id}", "servers": mqtt,
                      "parameters": {"ward": _WARD, "patient_id": _PATIENT}, "messages": {"ack": ref("Ack")}},
        "nurseSnoozes": {"address": "wearwatch/v1/snoozes/{ward}/{patient_id}", "servers": mqtt,
                         "parameters": {"ward": _WARD, "patient_id": _PATIENT}, "messages": {"snooze": ref("Snooze")}},
        "alertState": {"address": "wearwatch/v1/alerts/{ward}/{patient_id}", "servers": mqtt,
                       "parameters": {"ward": _WARD, "patient_id": _PATIENT},
                       "messages": {"state": ref("AlertState")}, "description": "retained, QoS 1"},
        "alertNotifications": {"address": "wearwatch/v1/notify/{ward}/{route}", "servers": mqtt,
                               "parameters": {"ward": _WARD, "route": {"enum": ["clinical", "device", "charge_nurse"],
                                                                       "description": "who is paged"}},
                               "messages": {"notification": ref("AlertNotification")}},
        "vitalsRaw": {"address": "vitals.raw", "servers": kafka,
                      "messages": {"reading": ref("Reading"), "batch": ref("ReadingBatch")},
                      "description": "valid readings from the gateway (topic names take WEARWATCH_TOPIC_PREFIX)."
                                     + _SEALED},
        "vitalsDlq": {"address": "vitals.dlq", "servers": kafka, "messages": {"deadLetter": ref("DeadLetter")},
                      "description": "everything refused, with its reason (`wearwatch dlq --vendor V`). A letter "
                                     "that names patients is sealed under each one's key in turn; one that names "
                                     "none is as shown"},
        "vitals1m": {"address": "vitals.1m", "servers": kafka, "messages": {"minutes": ref("Minutes")},
                     "description": _SEALED.strip()},
        "alerts": {"address": "alerts", "servers": kafka, "messages": {"event": ref("AlertEvent")},
                   "description": "one event per alert state change: the source of truth"},
        "alertsState": {"address": "alerts.state", "servers": kafka, "messages": {"state": ref("AlertStateRecord")},
                        "description": "compacted: each patient's open alerts, as the retained MQTT state"},
        "alertsCommands": {"address": "alerts.commands", "servers": kafka,
                           "messages": {"ack": ref("AckRecord"), "snooze": ref("SnoozeRecord"),
                                        "note": ref("NoteRecord")}, "description": _SEALED.strip()},
        "enrollment": {"address": "enrollment", "servers": kafka, "messages": {"record": ref("EnrollmentRecord")},
                       "description": "compacted, one partition: the live roster (`wearwatch patients`), followed "
                                      "by every gateway, worker and console"},
    }

    def op(action: str, channel: str, summary: str, *names: str, **bindings: Any) -> dict[str, Any]:
        doc: dict[str, Any] = {"action": action, "channel": {"$ref": f"#/channels/{channel}"}, "summary": summary,
                               "messages": [{"$ref": f"#/channels/{channel}/messages/{n}"} for n in names]}
        if bindings:
            doc["bindings"] = {"mqtt": {**bindings, "bindingVersion": "0.2.0"}}
        return doc

    operations = {
        "receiveDeviceVitals": op("receive", "deviceVitals", "the gateway takes device readings", "reading",
                                  "readings", qos=1),
        "receiveDeviceFhir": op("receive", "deviceFhir", "the gateway takes FHIR Observations", "observation",
                                qos=1),
        "receiveAcks": op("receive", "nurseAcks", "the gateway takes acknowledgements", "ack", qos=1),
        "receiveSnoozes": op("receive", "nurseSnoozes", "the gateway takes snoozes", "snooze", qos=1),
        "sendAlertState": op("send", "alertState", "the worker publishes each patient's open alerts", "state",
                             qos=1, retain=True),
        "sendNotifications": op("send", "alertNotifications", "the worker pages a ward's route", "notification",
                                qos=1, retain=False),
        "sendVitalsRaw": op("send", "vitalsRaw", "the gateway produces valid readings", "reading", "batch"),
        "sendDeadLetters": op("send", "vitalsDlq", "the gateway and the worker dead-letter bad input",
                              "deadLetter"),
        "sendMinutes": op("send", "vitals1m", "the worker produces closed minutes", "minutes"),
        "sendAlerts": op("send", "alerts", "the worker produces alert events", "event"),
        "sendAlertsState": op("send", "alertsState", "the worker keeps each patient's open alerts", "state"),
        "sendCommands": op("send", "alertsCommands", "the gateway (and the console) produce nurse commands",
                           "ack", "snooze", "note"),
        "sendEnrollment": op("send", "enrollment", "operators enrol, discharge and erase patients (wearwatch "
                             "patients)", "record"),
        "receiveEnrollment": op("receive", "enrollment", "the gateway, the worker and the console follow the roster",
                                "record"),
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "wearwatch",
            "version": version,
            "description": "Wearables -> MQTT -> gateway -> Kafka -> worker -> alerts, MQTT and InfluxDB. "
                           "Generated by `wearwatch contract --write` from the models the code validates with; "
                           "do not edit by hand. Operations are described from wearwatch's side.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "mqtt": {"host": "localhost:1883", "protocol": "mqtt", "protocolVersion": "5",
                     "description": "Mosquitto; one account per vendor, ACL per topic prefix (production: TLS, "
                                    "secure-mqtt on 8883)"},
            "kafka": {"host": "localhost:9092", "protocol": "kafka",
                      "description": "Apache Kafka (production: SASL_SSL); every topic name takes "
                                     "WEARWATCH_TOPIC_PREFIX"},
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": _schemas()},
    }


class _Dumper(yaml.SafeDumper):
    """Plain YAML: a part used twice is written twice, not as an anchor and alias."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render() -> str:
    """The document as YAML text (stable: the same code gives the same bytes)."""
    header = "# Generated by `wearwatch contract --write` (tools/contract.py); do not edit by hand.\n"
    return header + yaml.dump(asyncapi_document(), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", action="store_true", help="write the document to --out")
    group.add_argument("--check", action="store_true", help="exit 1 if --out differs from the generated document")
    parser.add_argument("--out", type=Path, default=DEFAULT_PATH, help="the document's path (docs/asyncapi.yaml)")


def run(args: argparse.Namespace) -> int:
    text = render()
    out: Path = args.out
    if args.write:
        write_atomically(out, lambda fh: fh.write(text.encode("utf-8")), private=False)
        print(f"wrote {out} ({len(text.splitlines())} lines)")
        return 0
    if args.check:
        try:
            current = out.read_text(encoding="utf-8")
        except OSError as exc:
            raise WearwatchError(f"{out}: cannot read ({exc.strerror or exc})") from None
        if current != text:
            print(f"{out} is stale: run `wearwatch contract --write`", file=sys.stderr)
            return 1
        print(f"{out} is up to date")
        return 0
    sys.stdout.write(text)
    return 0
