"""Settings, read from the environment in this one place and validated once.

Every process (gateway, worker, simulator, replay) calls :func:`load_settings`
and passes the frozen :class:`Settings` down. docker-compose.yml sets exactly
these variables; ``tests/test_compose.py`` checks that it does.

Topic names take an optional ``WEARWATCH_TOPIC_PREFIX`` so that test runs (and
tenants sharing a cluster) never collide.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from wearwatch.errors import ConfigError

__all__ = ["ENV_PREFIX", "LOG_LEVELS", "RENAMED", "Settings", "load_settings", "whsec_key"]

ENV_PREFIX = "WEARWATCH_"
#: the accepted values of WEARWATCH_LOG_LEVEL (any case)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class Settings(BaseModel):
    """All runtime settings. Field ``foo_bar`` is read from ``WEARWATCH_FOO_BAR``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Kafka
    kafka_bootstrap: str = Field("127.0.0.1:9092", description="host:port[,host:port]")
    topic_prefix: str = Field("", description="prepended to every topic name")
    partitions: int = Field(8, ge=1, le=1024, description="partitions of vitals.raw/alerts")
    replication_factor: int = Field(1, ge=1, le=5)
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="SASL_SSL in production"
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = Field(None, repr=False)
    kafka_ca_file: str | None = Field(None, description="CA bundle for the brokers' TLS certificates")
    # MQTT
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = Field(1883, ge=1, le=65535)
    mqtt_username: str | None = None
    mqtt_password: str | None = None
    mqtt_tls: bool = False
    mqtt_ca_file: str | None = None
    mqtt_client_id: str = "wearwatch-gateway"
    mqtt_share_group: str = Field(
        "", pattern=r"^[A-Za-z0-9_.\-]*$", max_length=64,
        description="gateways with the same group split the device and nurse topics between them (MQTT shared "
                    "subscriptions: each message reaches one of them); empty: this gateway takes every message")
    mqtt_rescue_after_s: float = Field(
        15.0, ge=0, le=86400,
        description="a gateway of a share group takes over the MQTT session of another that has been gone this "
                    "long without leaving the group (crashed, its node lost) and ends it: the broker delivers what "
                    "it queued there and stops handing that session a share (0: never)")
    gateway_batch_readings: int = Field(
        200, ge=1, le=5000, description="readings bound for one vitals.raw partition grouped into one record (1: off)")
    gateway_linger_ms: float = Field(5.0, ge=0, le=1000, description="how long a group waits for more readings")
    # the gateway's HTTP server: /healthz, /readyz, /metrics and the FHIR endpoints (ingest/http_server.py)
    gateway_http_host: str = Field("127.0.0.1", description="address the gateway's HTTP server binds")
    gateway_http_port: int = Field(8081, ge=0, le=65535, description="its port (0: any free port, logged)")
    # InfluxDB
    influx_url: str = "http://127.0.0.1:8086"
    influx_token: str | None = Field(None, repr=False, description="InfluxDB API token (1.8: user:password)")
    influx_org: str = "wearwatch"
    influx_bucket: str = "wearwatch"
    # Worker
    app_id: str = "wearwatch-worker"
    web_host: str = "127.0.0.1"
    web_port: int = Field(6066, ge=1, le=65535)
    worker_batch_size: int = Field(500, ge=1, le=100_000)
    worker_batch_window_s: float = Field(0.05, gt=0, le=10)
    worker_commit_interval_s: float = Field(
        2.0, gt=0, le=60, description="offset commits; changed patient states are written just before each")
    worker_state_write_readings: int = Field(
        32, ge=0, le=100_000,
        description="with more changed patient states than worker_state_write_eager at a commit, a state changed "
                    "by readings only is written once it holds this many unwritten readings (or is "
                    "worker_state_write_max_s old); the committed offsets stay behind its first unwritten "
                    "reading. 0: every changed state at every commit")
    worker_state_write_max_s: float = Field(
        120.0, gt=0, le=3600,
        description="the longest a patient state changed by readings stays unwritten (readings processed again "
                    "after a crash: up to this much input); every commit writes its share of the waiting states, "
                    "the oldest first, so each is written about once in this time at an even rate")
    worker_state_write_eager: int = Field(
        2000, ge=0, le=10_000_000,
        description="at most this many changed states at a commit: all are written (no pacing)")
    worker_state_version: int = Field(
        2, ge=0, le=3,
        description="format of the patient states the worker writes: 2 (the default: compressed with zlib), 3 "
                    "(compressed against a fixed dictionary: once every worker reads it), or 1 or 0 (the "
                    "uncompressed tree, the plain pickle of earlier versions) for the first phase of an upgrade "
                    "from workers that read only those; all are read")
    worker_recovery_stall_s: float = Field(
        60.0, gt=0, le=3600,
        description="exit with code 75 (restart me) if table recovery reads no changelog record for this long")
    worker_gc_full_interval_s: float = Field(
        900.0, gt=0, le=86400, description="full garbage collections (others skip long-lived objects)")
    worker_store: Literal["memory", "rocksdb"] = Field(
        "rocksdb",
        description="where the worker keeps patient states: memory (read back from the changelog at every "
                    "start) or rocksdb (on disk in the data directory; a restart reads only the changelog "
                    "written since)")
    worker_store_memory_mb: int = Field(
        32, ge=4, le=65536,
        description="memory the rocksdb store may use, shared by all the partitions a worker holds: its block "
                    "cache, with the memtables (at most three quarters) and index blocks charged to it")
    worker_live_states: int = Field(
        0, ge=0,
        description="the most patient states a worker keeps decoded in memory (0: every patient's); past it, "
                    "after each commit the others are packed in memory in their stored form (~0.5 KB against "
                    "~4 KB decoded) and decoded again when their patient next needs them: a bound on memory at "
                    "a CPU cost (a state packed and decoded again ~100 µs); what is written is unchanged")
    worker_standby_replicas: int = Field(
        0, ge=0, le=3,
        description="standby copies of each partition's patient states kept up to date by other workers, so a "
                    "fail-over reads only the changelog's newest records (needs the rocksdb store)")
    worker_malloc_threshold_kb: int = Field(
        0, ge=0, le=32768,
        description="glibc's allocator serves blocks of at least this many KiB from their own mappings and trims "
                    "its heaps above it (fixed, instead of a threshold that grows to 32 MiB: freed batch buffers "
                    "stay resident between the patient states); less memory for some CPU; 0: glibc's default")
    worker_stall_reread_s: float = Field(
        10.0, gt=0, le=600,
        description="a partition whose log holds records the worker's agent has not been handed for this long is "
                    "read directly (records Faust dropped at a rebalance, with nothing after them to show the "
                    "gap: a quiet patient's last readings)")
    worker_data_dir: str = Field(
        "", description="Faust's data directory (the RocksDB store's tables; one per worker process); "
                        "empty: one per app id under the system's temporary directory")
    tick_interval_s: float = Field(5.0, gt=0, le=600, description="time-driven checks (stale devices)")
    metrics_interval_s: float = Field(10.0, gt=0, le=3600, description="worker metrics to log and InfluxDB")
    idle_close_s: float = Field(120.0, gt=0, description="close a silent patient's open minutes after")
    # Alert delivery
    alerts_mqtt: bool = Field(True, description="publish alert state and notifications to nurse apps over MQTT")
    alerts_mqtt_username: str | None = Field(
        None, description="the worker's own MQTT account for alert delivery (default: WEARWATCH_MQTT_USERNAME)")
    alerts_mqtt_password: str | None = Field(None, repr=False, description="its password")
    webhook_url: str | None = Field(None, description="optional URL that receives every alert event (JSON POST)")
    webhook_secret: str | None = Field(
        None, repr=False, description="whsec_<base64> key signing webhook calls (Standard Webhooks); required with "
                                      "a webhook URL; several, space-separated, while rotating")
    enrollment_file: str | None = Field(
        None, description="CSV patient_id,ward,overrides_json read at start (the enrollment topic is applied on top)")
    require_enrollment: bool = Field(
        False, description="readings of patients never enrolled go to vitals.dlq (not_enrolled) instead of "
                           "ward unassigned")
    # Retention (wearwatch/retention.py): applied when a topic is created, and by `make stack-up` to existing ones
    retention_raw_days: float = Field(
        7.0, gt=0, le=3650, description="vitals.raw and vitals.1m: readings in transit (the minutes are in InfluxDB)")
    retention_dead_letters_days: float = Field(
        7.0, gt=0, le=3650, description="vitals.dlq: refused payloads, for vendors to fix their devices")
    retention_commands_days: float = Field(
        30.0, gt=0, le=3650, description="alerts.commands: nurse commands (their effect is in every alert event)")
    retention_alerts_days: float = Field(
        2190.0, gt=0, le=36500, description="alerts: the alert record (default 6 years, the HIPAA documentation "
                                            "period; set your own record-keeping rule)")
    retention_audit_days: float = Field(
        2190.0, gt=0, le=36500, description="audit: who did what in the console (default 6 years)")
    influx_retention_days: float = Field(
        365.0, gt=0, le=36500, description="InfluxDB: the 1-minute series, alert points and pipeline metrics")
    erasure_compaction_hours: float = Field(
        24.0, gt=0, le=720, description="compacted topics (state, roster, open alerts): a tombstone removes the "
                                        "record it replaces within this time (max.compaction.lag.ms)")
    # Ingest validation
    max_clock_skew_s: float = Field(300.0, ge=0, description="future timestamps tolerated")
    max_reading_age_s: float = Field(7 * 86400.0, gt=0, description="older readings are DLQ'd")
    max_payload_bytes: int = Field(256 * 1024, ge=1024)
    max_batch_readings: int = Field(5000, ge=1)
    # Privacy
    pseudonym_key: str | None = Field(
        None, repr=False, min_length=16, description="HMAC key for patient pseudonyms in InfluxDB (required)"
    )
    data_key_secret: str | None = Field(
        None, repr=False, min_length=32,
        description="wraps the per-patient data keys stored in the datakeys topic (wearwatch/datakeys.py): a random "
                    "string of at least 32 characters, the same in every service. Unset: data keys stored unwrapped")
    # Alert console (``wearwatch console``)
    console_host: str = "127.0.0.1"
    console_port: int = Field(8080, ge=1, le=65535)
    console_secret: str | None = Field(
        None, repr=False, min_length=32,
        description="signs session tokens; the same on every console replica (required by the console)")
    console_idle_timeout_s: float = Field(900.0, ge=30, le=86400, description="a session unused this long ends")
    console_session_max_s: float = Field(
        43200.0, ge=60, le=7 * 86400, description="a session ends this long after login, used or not")
    console_glucose_units: Literal["mg/dL", "mmol/L"] = Field(
        "mg/dL", description="glucose units of accounts that chose none")
    console_trusted_proxies: str = Field(
        "", description="comma-separated addresses/CIDRs whose X-Forwarded-For/-Proto (and SSO header) count")
    console_sso_header: str = Field(
        "", description="header naming the user, honoured only from a trusted proxy (e.g. X-Remote-User); empty: off")
    console_tls_cert: str | None = Field(None, description="serve HTTPS with this certificate chain (PEM)")
    console_tls_key: str | None = Field(None, description="... and this private key (PEM)")
    console_login_max_failures: int = Field(
        5, ge=1, le=1000, description="failed logins per username (x4 per address) before back-off")
    console_login_window_s: float = Field(900.0, ge=10, le=86400, description="failed logins count this long")
    # Logging
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = Field(
        "text", description="text: one readable line per record; json: one JSON object per line (log pipelines)")

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        v = v.upper()
        if v not in LOG_LEVELS:
            raise ValueError(f"unknown log level {v!r}")
        return v

    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap(cls, v: str) -> str:
        for hp in v.split(","):
            host, _, port = hp.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"expected host:port, got {hp!r}")
        return v

    @field_validator("log_format", mode="before")
    @classmethod
    def _log_format(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v

    @field_validator("webhook_secret")
    @classmethod
    def _webhook_secret(cls, v: str | None) -> str | None:
        if v is None:
            return v
        for secret in v.split():
            whsec_key(secret)
        return v

    @model_validator(mode="after")
    def _webhook_needs_secret(self) -> Settings:
        if self.webhook_url and not self.webhook_secret:
            raise ValueError(f"{ENV_PREFIX}WEBHOOK_SECRET is required when {ENV_PREFIX}WEBHOOK_URL is set: "
                             "receivers must be able to tell wearwatch's calls from forged ones")
        return self

    @model_validator(mode="after")
    def _standby_needs_rocksdb(self) -> Settings:
        if self.worker_standby_replicas and self.worker_store != "rocksdb":
            raise ValueError(f"{ENV_PREFIX}WORKER_STANDBY_REPLICAS needs {ENV_PREFIX}WORKER_STORE=rocksdb: a "
                             "standby in the memory store is read again from the changelog's start when it takes over")
        return self

    def require(self, *names: str) -> None:
        """Raise :class:`ConfigError` naming every listed setting that is unset."""
        missing = [ENV_PREFIX + n.upper() for n in names if getattr(self, n) in (None, "")]
        if missing:
            raise ConfigError(f"required setting(s) missing: {', '.join(missing)}")

    # topic names -------------------------------------------------------
    @property
    def topic_vitals(self) -> str:
        return f"{self.topic_prefix}vitals.raw"

    @property
    def topic_dlq(self) -> str:
        return f"{self.topic_prefix}vitals.dlq"

    @property
    def topic_minutes(self) -> str:
        return f"{self.topic_prefix}vitals.1m"

    @property
    def topic_commands(self) -> str:
        return f"{self.topic_prefix}alerts.commands"

    @property
    def topic_alerts(self) -> str:
        return f"{self.topic_prefix}alerts"

    @property
    def topic_tokens(self) -> str:
        """The compacted topic of vendor API tokens (``wearwatch tokens``; followed by every gateway)."""
        return f"{self.topic_prefix}gateway.tokens"

    @property
    def topic_alert_state(self) -> str:
        """Compacted: each patient's open alerts (key = patient_id), written by the worker."""
        return f"{self.topic_prefix}alerts.state"

    @property
    def topic_console_users(self) -> str:
        """Compacted: console accounts (key = username)."""
        return f"{self.topic_prefix}console.users"

    @property
    def topic_console_preferences(self) -> str:
        """Compacted: each account's own preferences (key = username)."""
        return f"{self.topic_prefix}console.preferences"

    @property
    def topic_console_sessions(self) -> str:
        """Compacted: ended console sessions (key = session id)."""
        return f"{self.topic_prefix}console.sessions"

    @property
    def topic_enrollment(self) -> str:
        """The compacted roster: each patient's ward, overrides and status (``wearwatch patients``)."""
        return f"{self.topic_prefix}enrollment"

    @property
    def topic_datakeys(self) -> str:
        """Compacted: the per-patient data keys the transit logs are sealed with (key = key id)."""
        return f"{self.topic_prefix}datakeys"

    @property
    def topic_audit(self) -> str:
        """Append-only audit trail of the console and the users CLI (key = actor)."""
        return f"{self.topic_prefix}audit"

    @property
    def kafka_url(self) -> str:
        """The broker list in Faust's ``kafka://`` form."""
        return ";".join(f"kafka://{hp.strip()}" for hp in self.kafka_bootstrap.split(","))

    def env(self) -> dict[str, str]:
        """These settings as environment variables (for child processes)."""
        out: dict[str, str] = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            out[ENV_PREFIX + name.upper()] = str(value).lower() if isinstance(value, bool) else str(value)
        return out


def whsec_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret; ValueError if malformed or shorter than 24 bytes.

    >>> len(whsec_key("whsec_" + "A" * 32))
    24
    """
    if not secret.startswith("whsec_"):
        raise ValueError("a webhook secret has the form whsec_<base64>")
    try:
        key = base64.b64decode(secret[len("whsec_"):], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("a webhook secret has the form whsec_<base64> (not valid base64)") from exc
    if len(key) < 24:
        raise ValueError("a webhook secret's key must be at least 24 bytes (192 bits)")
    return key


#: settings that were renamed: (old variable, what replaced it)
RENAMED = {
    "WEARWATCH_FHIR_HTTP_HOST": "WEARWATCH_GATEWAY_HTTP_HOST",
    "WEARWATCH_FHIR_HTTP_PORT": "WEARWATCH_GATEWAY_HTTP_PORT (one HTTP server for health, metrics and FHIR, "
                                "always on; the FHIR endpoints now need a vendor token: wearwatch tokens add)",
}


def env_names() -> list[str]:
    """Every environment variable :func:`load_settings` reads."""
    return [ENV_PREFIX + name.upper() for name in Settings.model_fields]


def load_settings(
    environ: Mapping[str, str] | None = None, **overrides: Any
) -> Settings:
    """Build :class:`Settings` from ``environ`` (default ``os.environ``) plus overrides.

    Raises :class:`~wearwatch.errors.ConfigError` naming the variable that is wrong.

    >>> s = load_settings({"WEARWATCH_TOPIC_PREFIX": "t1."})
    >>> s.topic_vitals, s.topic_alerts
    ('t1.vitals.raw', 't1.alerts')
    >>> try:
    ...     load_settings({"WEARWATCH_PARTITIONS": "zero"})
    ... except ConfigError as exc:
    ...     print(str(exc)[:45])
    WEARWATCH_PARTITIONS: Input should be a valid
    """
    env = os.environ if environ is None else environ
    for old_name, replacement in RENAMED.items():
        if env.get(old_name):
            raise ConfigError(f"{old_name} is no longer read; use {replacement}")
    values: dict[str, Any] = {}
    for name in Settings.model_fields:
        key = ENV_PREFIX + name.upper()
        if key in env and env[key] != "":
            values[name] = env[key]
    values.update(overrides)
    try:
        return Settings(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        if not err["loc"]:  # a rule across settings: its message names them
            raise ConfigError(str(err["msg"]).removeprefix("Value error, ")) from exc
        field = str(err["loc"][0])
        raise ConfigError(f"{ENV_PREFIX}{field.upper()}: {err['msg']}") from exc
