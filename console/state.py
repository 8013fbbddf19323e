"""The console's view of the fleet, rebuilt from Kafka by every replica: nothing lives only here.

:class:`ConsoleView` applies records of the topics the console follows
(:mod:`console.follower` feeds it) and answers the server's questions:

* ``alerts.state`` → each patient's open alerts and ward (a tombstone: none open);
* ``console.users`` → accounts; ``console.preferences`` → each account's choices;
* ``console.sessions`` → sessions ended by a logout (until they would have expired anyway);
* ``audit`` (from the last login window on) → failed logins for :class:`~console.auth.LoginThrottle`.

Two replicas that read the same topics hold the same view, so they answer the same; a
restarted replica reads the topics from the start (the compacted ones are small: one record
per patient with open alerts, per account, per preference, per recent logout).

Listeners (the server's event streams) are told about each change: ``("patient", patient_id,
old_ward)`` when a patient's open alerts change, ``("accounts",)`` when an account, its
preferences or a session revocation change.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from console.alarms import WardAlarms
from console.auth import LoginThrottle
from console.models import Account, AuditRecord, Preferences, Revocation
from console.views import Scope, in_scope, sorted_rows

__all__ = ["ConsoleView", "PatientAlerts"]

log = logging.getLogger(__name__)

#: how many resolved alert ids the view remembers (to answer 409 instead of 404)
CLOSED_KEPT = 200_000


@dataclass(frozen=True, slots=True)
class PatientAlerts:
    patient_id: str
    ward: str
    updated_ms: int
    alerts: tuple[dict[str, Any], ...]


Listener = Callable[[tuple[Any, ...]], None]


class ConsoleView:
    """Everything a console replica knows, applied record by record (see the module docs)."""

    def __init__(self, throttle: LoginThrottle) -> None:
        self.patients: dict[str, PatientAlerts] = {}
        #: alert id -> patient id, for the open alerts
        self.alert_index: dict[str, str] = {}
        #: per ward, the alerts that need someone (the locked screen's counts, without a walk of every patient)
        self.alarms = WardAlarms()
        #: recently closed alert id -> (patient id, ward)
        self.closed: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self.accounts: dict[str, Account] = {}
        self.preferences: dict[str, Preferences] = {}
        #: session id -> the time it would have expired anyway
        self.revoked: dict[str, int] = {}
        self.throttle = throttle
        self.listeners: set[Listener] = set()
        self.bad_records = 0
        self._rows: dict[tuple[str, str], list[dict[str, Any]]] = {}

    # -- applying records ---------------------------------------------------------------
    def apply(self, kind: str, key: bytes | None, value: bytes | None, now_ms: int) -> None:
        """Apply one record of the topic ``kind`` (``state``, ``users``, ``preferences``, ``sessions``,
        ``audit``); a malformed record is counted and skipped (logged without its content)."""
        try:
            if kind == "state":
                self._apply_state(key, value)
            elif kind == "users":
                self._apply_account(key, value)
            elif kind == "preferences":
                if key is not None and value is None:
                    self.preferences.pop(key.decode(), None)
                elif value is not None:
                    p = Preferences.model_validate_json(value)
                    self.preferences[p.username] = p
                self._notify(("accounts",))
            elif kind == "sessions":
                if value is not None:
                    r = Revocation.model_validate_json(value)
                    if r.expires_ms > now_ms:
                        self.revoked[r.sid] = r.expires_ms
                        self._notify(("accounts",))
            elif kind == "audit" and value is not None:
                self._apply_audit(AuditRecord.model_validate_json(value))
        except (ValidationError, ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            self.bad_records += 1
            log.warning("malformed %s record skipped (%s)", kind, type(exc).__name__)

    def _apply_state(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            raise ValueError("alerts.state record without a key")
        pid = key.decode()
        old = self.patients.get(pid)
        if value is None:
            new = None
        else:
            doc = orjson.loads(value)
            if doc.get("schema_version") != 1 or doc.get("patient_id") != pid:
                raise ValueError("not an alerts.state record of this key")
            alerts = tuple(a for a in doc["alerts"] if isinstance(a, dict) and "alert_id" in a)
            new = PatientAlerts(pid, str(doc.get("ward") or "unassigned"), int(doc["updated_ms"]), alerts)
        if old is not None:
            for a in old.alerts:
                self.alert_index.pop(a["alert_id"], None)
                self.closed[a["alert_id"]] = (pid, old.ward)
        if new is not None and new.alerts:
            self.patients[pid] = new
            for a in new.alerts:
                self.alert_index[a["alert_id"]] = pid
                self.closed.pop(a["alert_id"], None)
        else:
            self.patients.pop(pid, None)
        kept = new if new is not None and new.alerts else None
        self.alarms.update(pid, old.ward if old is not None else None, kept.ward if kept is not None else None,
                           kept.alerts if kept is not None else ())
        while len(self.closed) > CLOSED_KEPT:
            self.closed.popitem(last=False)
        self._rows.pop((pid, "mg/dL"), None)
        self._rows.pop((pid, "mmol/L"), None)
        if old is not None or new is not None:
            self._notify(("patient", pid, old.ward if old is not None else None))

    def _apply_account(self, key: bytes | None, value: bytes | None) -> None:
        if value is None:
            if key is not None:
                self.accounts.pop(key.decode(), None)
        else:
            a = Account.model_validate_json(value)
            self.accounts[a.username] = a
        self._notify(("accounts",))

    def _apply_audit(self, r: AuditRecord) -> None:
        if r.action == "login_failed":
            self.throttle.record_failure(r.actor, r.address, r.ts_ms, r.id)
        elif r.action == "login":
            self.throttle.record_success(r.actor)

    def expire_revocations(self, now_ms: int) -> None:
        for sid in [s for s, exp in self.revoked.items() if exp <= now_ms]:
            del self.revoked[sid]

    # -- listeners ------------------------------------------------------------------------
    def _notify(self, change: tuple[Any, ...]) -> None:
        for listener in list(self.listeners):
            listener(change)

    # -- questions --------------------------------------------------------------------------
    def ward_of(self, patient_id: str) -> str | None:
        p = self.patients.get(patient_id)
        return p.ward if p is not None else None

    def patient_rows(self, patient_id: str, units: str) -> list[dict[str, Any]]:
        """The patient's open alerts as API rows (most urgent first), cached per unit."""
        key = (patient_id, units)
        rows = self._rows.get(key)
        if rows is None:
            p = self.patients.get(patient_id)
            rows = sorted_rows(p.alerts, units) if p is not None else []
            if p is not None:
                self._rows[key] = rows
        return rows

    def rows(self, scope: Scope, units: str) -> list[dict[str, Any]]:
        """Every open alert of the wards in ``scope``, most urgent first."""
        from console.views import sort_key

        out: list[dict[str, Any]] = []
        for pid, p in self.patients.items():
            if in_scope(scope, p.ward):
                out.extend(self.patient_rows(pid, units))
        out.sort(key=sort_key)
        return out

    def alarm_counts(self, scope: Scope, now_ms: int) -> dict[str, int]:
        """Alerts of the wards in ``scope`` that need someone, by priority (counts only; from the per-ward index:
        the cost is that of the wards asked for, not of every patient with open alerts)."""
        return self.alarms.counts(scope, now_ms)

    def find_alert(self, alert_id: str) -> tuple[PatientAlerts, dict[str, Any]] | None:
        pid = self.alert_index.get(alert_id)
        p = self.patients.get(pid) if pid is not None else None
        if p is None:
            return None
        for a in p.alerts:
            if a["alert_id"] == alert_id:
                return p, a
        return None
