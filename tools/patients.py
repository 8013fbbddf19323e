"""``wearwatch patients``: the live roster on the compacted Kafka topic ``enrollment``.

* ``enrol ID --ward W [--overrides FILE|JSON]`` enrols a patient (or changes their ward or
  overrides, or enrols a discharged patient again), creating their data key first if they have none
  (:func:`wearwatch.datakeys.ensure_data_keys`: the gateway then finds it when their first reading comes);
* ``discharge ID`` discharges them: the worker closes their open alerts (cause
  ``discharged``), and their later readings go to ``vitals.dlq`` as ``not_enrolled``;
* ``list [--ward W] [--all]`` prints the roster (enrolled patients; ``--all`` with the discharged);
* ``export ID [--out FILE]`` writes everything held about the patient (enrolment, alerts with their
  lifecycle, 1-minute series) as one FHIR R4 Bundle for a subject-access request (:mod:`tools.subject_access`);
* ``erase ID`` erases a discharged patient (README, Erasure): the roster's tombstone, on which every worker
  drops the patient's state (changelog tombstone), open-alert record (``alerts.state`` tombstone) and
  retained MQTT alert state; InfluxDB's points under their pseudonym; a tombstone for every record of the
  patient on ``alerts`` and ``audit`` (:mod:`tools.erasure`); a tombstone for each of the patient's data keys
  (:mod:`wearwatch.datakeys`), which leaves what the transit logs (``vitals.*``, ``alerts.commands``) hold of
  them sealed unreadable; and one audit record that an erasure happened, without the patient; it prints by when
  the transit logs hold none of the patient's records written in clear text before sealing;
* ``import FILE.csv`` enrols every patient of an enrollment file (``patient_id,ward,overrides_json``,
  :mod:`alerts.enrollment`); patients already enrolled with the same ward and overrides are skipped; every
  patient of the file without a data key gets one.

Gateways, workers and consoles follow the topic and apply a change within seconds, with no
restart. Overrides are checked against the detectors' settings before anything is written.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from alerts.enrollment import Enrollment, check_overrides, load_enrollment
from console.models import AuditRecord
from tools.erasure import erase_from_logs, expiry_by
from tools.files import write_atomically
from tools.subject_access import subject_access_bundle
from wearwatch.config import Settings, load_settings
from wearwatch.contract.enrollment import EnrollmentRecord
from wearwatch.contract.ids import ID_RULE, is_patient_id
from wearwatch.datakeys import ensure_data_keys, erase_data_keys
from wearwatch.enrollment_topic import ensure_enrollment_topic, publish_enrollment, read_enrollment
from wearwatch.errors import ConfigError, StackUnavailable
from wearwatch.influxdb import delete_patient_points
from wearwatch.privacy import pseudonym
from wearwatch.transport import ensure_topics, kafka_producer

__all__ = ["add_arguments", "parse_overrides", "run"]

log = logging.getLogger(__name__)


def _now_ms() -> int:
    return int(time.time() * 1000)


def parse_overrides(text: str | None) -> dict[str, float | int | bool]:
    """``--overrides``: a JSON object, or the path of a file holding one; checked against the detectors.

    >>> parse_overrides('{"glucose_low_mgdl": 75}')
    {'glucose_low_mgdl': 75}
    >>> parse_overrides(None)
    {}
    """
    if not text:
        return {}
    raw = text
    if not text.lstrip().startswith("{"):
        try:
            raw = Path(text).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"--overrides: cannot read {text}: {exc.strerror}") from exc
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ConfigError("--overrides: not valid JSON") from None
    return dict(check_overrides(doc, "--overrides"))


def _patient(pid: str) -> str:
    if not is_patient_id(pid):
        raise ConfigError(f"a patient id must be {ID_RULE}")
    return pid


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    enrol = sub.add_parser("enrol", help="enrol a patient, or change their ward or overrides")
    enrol.add_argument("patient_id")
    enrol.add_argument("--ward", required=True)
    enrol.add_argument("--overrides", default=None, metavar="FILE|JSON",
                       help="detector settings for this patient (a JSON object, or a file holding one)")
    discharge = sub.add_parser("discharge", help="discharge a patient: open alerts close, readings are refused")
    discharge.add_argument("patient_id")
    listing = sub.add_parser("list", help="the roster: patient, ward, status, since, overrides")
    listing.add_argument("--ward", default=None)
    listing.add_argument("--all", action="store_true", help="discharged patients too")
    export = sub.add_parser("export", help="everything held about a patient as one FHIR R4 Bundle (subject access)")
    export.add_argument("patient_id")
    export.add_argument("--out", type=Path, default=None, help="write here instead of stdout")
    erase = sub.add_parser("erase", help="erase everything that names or can be linked to a discharged patient")
    erase.add_argument("patient_id")
    erase.add_argument("--actor", help="who asks, for the audit trail (default: cli:<login name>)")
    imp = sub.add_parser("import", help="enrol every patient of an enrollment CSV (patient_id,ward,overrides_json)")
    imp.add_argument("file", type=Path)


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def run(args: argparse.Namespace) -> int:
    settings = load_settings()
    ensure_enrollment_topic(settings)
    return int(_ACTIONS[args.action](settings, args))


def _enrol(settings: Settings, args: argparse.Namespace) -> int:
    pid = _patient(args.patient_id)
    if not is_patient_id(args.ward):
        raise ConfigError(f"--ward must be {ID_RULE}")
    rec = EnrollmentRecord(patient_id=pid, ward=args.ward, overrides=parse_overrides(args.overrides),
                           since_ms=_now_ms())
    # the patient's data key before the enrolment: the gateway then finds it when their first reading comes
    ensure_data_keys(settings, [pid])
    publish_enrollment(settings, [rec])
    print(f"{pid} enrolled in ward {rec.ward}" + (f" with overrides {rec.overrides}" if rec.overrides else ""))
    return 0


def _discharge(settings: Settings, args: argparse.Namespace) -> int:
    pid = _patient(args.patient_id)
    current = read_enrollment(settings).get(pid)
    if current is None:
        print(f"{pid} is not enrolled", file=sys.stderr)
        return 1
    if not current.enrolled:
        print(f"{pid} was already discharged at {_iso(current.since_ms)}")
        return 0
    publish_enrollment(settings, [current.discharged(_now_ms())])
    print(f"{pid} discharged from ward {current.ward}")
    return 0


def _list(settings: Settings, args: argparse.Namespace) -> int:
    rows = sorted(read_enrollment(settings).values(), key=lambda r: (r.ward, r.patient_id))
    print(f"{'patient':<24}  {'ward':<12}  {'status':<10}  {'since':<20}  overrides")
    for r in rows:
        if (args.ward is not None and r.ward != args.ward) or (not args.all and not r.enrolled):
            continue
        overrides = orjson.dumps(r.overrides).decode() if r.overrides else ""
        print(f"{r.patient_id:<24}  {r.ward:<12}  {r.status:<10}  {_iso(r.since_ms):<20}  {overrides}")
    return 0


def _import(settings: Settings, args: argparse.Namespace) -> int:
    enrollment: Enrollment = load_enrollment(args.file)
    current = read_enrollment(settings)
    records = enrollment.records(_now_ms())
    todo = [r for r in records
            if not ((c := current.get(r.patient_id)) is not None and c.enrolled and c.ward == r.ward
                    and c.overrides == r.overrides)]
    # every patient of the file gets a data key if they have none (those enrolled before keys were made here too)
    ensure_data_keys(settings, [r.patient_id for r in records if r.enrolled])
    publish_enrollment(settings, todo)
    print(f"{len(todo)} patient(s) enrolled from {args.file.name}, {len(enrollment) - len(todo)} already enrolled")
    log.info("imported %d enrollment record(s)", len(todo))
    return 0


def _export(settings: Settings, args: argparse.Namespace) -> int:
    pid = _patient(args.patient_id)
    if args.out is not None and not args.out.resolve().parent.is_dir():
        raise ConfigError(f"--out {args.out}: folder {args.out.parent} does not exist")
    doc = subject_access_bundle(settings, pid)
    data = orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"
    if args.out is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        write_atomically(args.out, lambda fh: fh.write(data))
    kinds: dict[str, int] = {}
    for e in doc["entry"]:
        kinds[e["resource"]["resourceType"]] = kinds.get(e["resource"]["resourceType"], 0) + 1
    log.info("exported a patient's record: %s", ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())))
    return 0


def _erase(settings: Settings, args: argparse.Namespace) -> int:
    """Erasure (see the README): roster tombstone (the worker then tombstones the state and ``alerts.state`` and
    deletes the retained MQTT state), InfluxDB points under the pseudonym, one audit record without the patient."""
    pid = _patient(args.patient_id)
    settings.require("influx_token", "pseudonym_key")
    assert settings.pseudonym_key is not None
    current = read_enrollment(settings).get(pid)
    if current is not None and current.enrolled:
        print(f"{pid} is enrolled: discharge them first (their open alerts close on the record)", file=sys.stderr)
        return 1
    if current is not None:
        # the worker writes a patient's last minutes within WEARWATCH_IDLE_CLOSE_S of their last reading:
        # delete InfluxDB's points only after those are in
        wait_s = (current.since_ms + 2 * settings.idle_close_s * 1000 - _now_ms()) / 1000
        if wait_s > 0:
            print(f"waiting {wait_s:.0f} s for the last minutes after the discharge to reach InfluxDB")
            time.sleep(wait_s)
    publish_enrollment(settings, [pid])  # the tombstone: every service forgets the patient
    # the transit logs: what they hold of the patient was sealed under the patient's data keys; destroy them
    keys = erase_data_keys(settings, pid)
    tag = pseudonym(settings.pseudonym_key, pid)
    delete_patient_points(settings, tag)
    # the long-lived logs: a tombstone for every record of the patient (tools/erasure.py)
    ensure_topics(settings, [settings.topic_alerts])
    ensure_topics(settings, [settings.topic_audit], partitions=1)
    logs = erase_from_logs(settings, pid, tag)
    erasure_id = uuid.uuid4().hex
    detail: dict[str, Any] = {"erasure_id": erasure_id, "enrolment": "tombstone", "influxdb": "deleted",
                              settings.topic_datakeys: {"tombstones": keys}}
    detail.update({r.topic: {"tombstones": r.tombstones, "records": r.records, "shared": r.shared} for r in logs})
    audit = AuditRecord(ts_ms=_now_ms(), actor=args.actor or f"cli:{getpass.getuser()}", action="patient_erase",
                        detail=detail)
    producer = kafka_producer(settings, client_id="wearwatch-patients")
    try:
        producer.send(settings.topic_audit, key=audit.record_key, value=audit.to_json()).get(timeout=30)
    except Exception as exc:  # KafkaError, KafkaTimeoutError
        raise StackUnavailable(f"Kafka did not take the audit record: {type(exc).__name__}") from exc
    finally:
        producer.close(timeout=10)
    hours = f"{settings.erasure_compaction_hours:g} h"
    print(f"erasure {erasure_id}: enrolment tombstoned, InfluxDB points deleted; the workers drop the patient's "
          "state, open-alert record and retained MQTT state within seconds, compaction removes the replaced "
          f"records within {hours}")
    for r in logs:
        line = f"  {r.topic}: {r.records} record(s) of the patient, {r.tombstones} tombstone(s) written"
        if r.shared or r.keyless:
            line += (f"; {r.shared + r.keyless} record(s) under a key other records share (or none) are left to "
                     "the topic's retention")
        print(line + f", compacted away within {hours}")
    print(f"  {settings.topic_datakeys}: {keys} data key(s) of the patient destroyed: what the transit logs hold "
          "of them sealed can no longer be read by anyone")
    for topic, by_ms in expiry_by(settings, _now_ms()).items():
        print(f"  {topic}: sealed records unreadable now; any written in clear text before sealing are gone by "
              f"{_iso(by_ms)} (up to one segment later)")
    log.info("erasure %s done", erasure_id)
    return 0


_ACTIONS = {"enrol": _enrol, "discharge": _discharge, "list": _list, "import": _import, "export": _export,
            "erase": _erase}
