#!/usr/bin/env bash
# The local stack for wearwatch, without Docker: Apache Kafka (KRaft, one node),
# Mosquitto and InfluxDB 1.8 on 127.0.0.1, provisioned on first use into the
# repo's git-ignored .stack/ directory and started as plain processes.
#
#   stack.sh up                    provision what is missing, start what is not running, wait until ready
#   stack.sh down                  stop the services this stack started (SIGTERM, then SIGKILL)
#   stack.sh status                one line per service: up/down, pid, port
#   stack.sh start-service NAME    NAME = kafka | mosquitto | influxdb
#   stack.sh stop-service NAME
#   stack.sh restart-service NAME
#   stack.sh logs NAME             tail of the service's log
#
# Everything it writes (jars, the influxd binary, data, logs, pid files, the
# generated credentials in .stack/credentials.env and .json) lives in .stack/.
# Provisioning is idempotent: a second `up` only checks and takes seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DEPLOY="$ROOT/deploy"
# .stack may be a symlink to a stack shared by several checkouts of the project (git worktrees):
# its real path is what the running services carry in their command lines
STACK="$(realpath -m "$ROOT/.stack")"
RUN="$STACK/run"
BIN="$STACK/bin"
KAFKA_DIR="$STACK/kafka"
MOSQ_DIR="$STACK/mosquitto"
INFLUX_DIR="$STACK/influxdb"
CTL="$DEPLOY/stack/stackctl.py"
SERVICES=(kafka mosquitto influxdb)

INFLUXDB_MODULE="github.com/influxdata/influxdb/cmd/influxd"
INFLUXDB_VERSION="v1.8.10"
KAFKA_HEAP="${STACK_KAFKA_HEAP:-1g}"

say() { printf '==> %s\n' "$*"; }
warn() { printf 'stack: warning: %s\n' "$*" >&2; }
die() { printf 'stack: error: %s\n' "$*" >&2; exit 1; }

mkdir -p "$RUN" "$BIN"
chmod 700 "$STACK"

# ------------------------------------------------------------------ tools
python_bin() {
    if [[ -x "$ROOT/.venv/bin/python" ]]; then
        echo "$ROOT/.venv/bin/python"
    else
        command -v python3 || die "python3 not found"
    fi
}

# readiness checks need kafka-python and paho-mqtt: the project's virtualenv has them
venv_python() {
    local py="$ROOT/.venv/bin/python"
    [[ -x "$py" ]] || die "no virtualenv at $ROOT/.venv: run \`make venv\` (or \`make stack-up\`, which does it)"
    "$py" -c 'import kafka, paho.mqtt' 2>/dev/null \
        || die "$ROOT/.venv lacks kafka-python or paho-mqtt: run \`make venv\`"
    echo "$py"
}

APT_UPDATED=0
apt_install() {
    command -v apt-get >/dev/null || die "need $* but apt-get is not available: install them by hand"
    local sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    if [[ $APT_UPDATED -eq 0 ]]; then
        say "apt-get update (first run only)…"
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null \
            || die "apt-get update failed"
        APT_UPDATED=1
    fi
    say "apt-get install $* (first run only)…"
    # Debian starts a packaged daemon (a system-wide Mosquitto on 0.0.0.0:1883) at
    # install unless policy-rc.d forbids it: forbid it for this install only.
    local policy=/usr/sbin/policy-rc.d made_policy=0
    if [[ $(id -u) -eq 0 && ! -e $policy ]]; then
        printf '#!/bin/sh\n# temporary, from wearwatch deploy/stack/stack.sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        made_policy=1
    fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" \
        | grep -E '^(Setting up|Unpacking)' || true
    [[ $made_policy -eq 0 ]] || rm -f "$policy"
    for p in "$@"; do
        dpkg -s "$p" >/dev/null 2>&1 || die "apt-get install $p failed"
    done
}

java_bin() {
    local j
    if [[ -x /usr/bin/java ]]; then j=/usr/bin/java; else j="$(command -v java || true)"; fi
    echo "$j"
}

java_major() {
    "$1" -XshowSettings:properties -version 2>&1 | awk -F'= ' '/java.specification.version/ {print $2}' | cut -d. -f1
}

ensure_java() {
    local j; j="$(java_bin)"
    if [[ -z "$j" || "$(java_major "$j")" -lt 17 ]]; then
        apt_install openjdk-17-jre-headless
        j=/usr/lib/jvm/java-17-openjdk-amd64/bin/java
        [[ -x "$j" ]] || j="$(java_bin)"
    fi
    [[ "$(java_major "$j")" -ge 17 ]] || die "Kafka 4 needs Java 17 or newer; $j is older"
    JAVA="$j"
}

ensure_mvn() {
    command -v mvn >/dev/null || apt_install maven
}

go_bin() {
    if [[ -x /usr/local/go/bin/go ]]; then echo /usr/local/go/bin/go; else command -v go || true; fi
}

# render TEMPLATE OUT KEY=VALUE...: copy a template from deploy/, replacing @KEY@
render() {
    local tpl="$1" out="$2" text kv; shift 2
    text="$(<"$tpl")"
    for kv in "$@"; do text="${text//@${kv%%=*}@/${kv#*=}}"; done
    printf '%s\n' "$text" >"$out.tmp"
    mv "$out.tmp" "$out"
}

# ------------------------------------------------------------------ processes
pidfile() { echo "$RUN/$1.pid"; }

# the marker a live process of this stack has in its command line
marker() {
    case "$1" in
        kafka) echo "$KAFKA_DIR/server.properties" ;;
        mosquitto) echo "$MOSQ_DIR/mosquitto.conf" ;;
        influxdb) echo "$INFLUX_DIR/influxdb.conf" ;;
    esac
}

pid_alive() {
    local pid="$1" state
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
    state="$(awk '/^State:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)"
    [[ "$state" != Z ]]
}

# prints the pid of NAME if this stack started it and it still runs
service_pid() {
    local f pid
    f="$(pidfile "$1")"
    [[ -f "$f" ]] || return 1
    pid="$(<"$f")"
    pid_alive "$pid" || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$(marker "$1")" || return 1
    echo "$pid"
}

ports() {
    case "$1" in
        kafka) echo "9092 9093" ;;
        mosquitto) echo 1883 ;;
        influxdb) echo "8086 8088" ;;
    esac
}

port_user() { # what listens on 127.0.0.1:PORT or *:PORT, if anything
    ss -Hltnp "sport = :$1" 2>/dev/null | awk '{print $4, $6}' | head -1
}

log_files() {
    case "$1" in
        kafka) echo "$KAFKA_DIR/logs/kafka.out $KAFKA_DIR/logs/server.log" ;;
        mosquitto) echo "$MOSQ_DIR/mosquitto.log" ;;
        influxdb) echo "$INFLUX_DIR/influxd.log" ;;
    esac
}

show_logs() {
    local n="${2:-40}" f
    for f in $(log_files "$1"); do
        [[ -s "$f" ]] || continue
        printf -- '----- last %s lines of %s (cut at 400 columns) -----\n' "$n" "$f" >&2
        tail -n "$n" "$f" | cut -c1-400 >&2
    done
}

# spawn NAME LOG CMD...: run CMD in its own session, detached from this shell;
# the pid file gets the pid of CMD itself (bash execs into it)
spawn() {
    local name="$1" log="$2"; shift 2
    local f; f="$(pidfile "$name")"
    rm -f "$f"
    # keep one previous log once it passes 50 MB
    if [[ -f "$log" && $(stat -c %s "$log") -gt 52428800 ]]; then mv -f "$log" "$log.1"; fi
    printf '\n===== %s starting %s =====\n' "$(date -Is)" "$name" >>"$log"
    # fd 9 is the stack lock: the service must not inherit (and hold) it
    setsid bash -c 'echo $$ >"$0"; exec "$@"' "$f" "$@" </dev/null >>"$log" 2>&1 9>&- &
    local i
    for i in $(seq 50); do [[ -s "$f" ]] && break; sleep 0.1; done
    [[ -s "$f" ]] || die "$name: did not start (no pid file)"
}

check_ports_free() {
    local p u
    for p in $(ports "$1"); do
        u="$(port_user "$p")"
        [[ -z "$u" ]] || die "$1: port $p is already in use by another process ($u); stop it first (this stack did not start it)"
    done
}

# ------------------------------------------------------------------ provisioning
provision_creds() {
    local r; r="$("$(python_bin)" "$CTL" creds "$STACK")"
    [[ "$r" == created ]] && say "generated credentials into .stack/credentials.env and .stack/credentials.json (mode 600)"
    return 0
}

kafka_version() { sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$DEPLOY/kafka/pom.xml"; }

provision_kafka() {
    ensure_java
    local libs="$KAFKA_DIR/libs" stamp sum t0=$SECONDS
    mkdir -p "$KAFKA_DIR/logs" "$KAFKA_DIR/data"
    stamp="$libs/.pom.sha256"
    sum="$(sha256sum "$DEPLOY/kafka/pom.xml" | cut -d' ' -f1)"
    if [[ ! -f "$stamp" || "$(<"$stamp")" != "$sum" ]]; then
        ensure_mvn
        say "fetching Apache Kafka $(kafka_version) jars from Maven Central (first run only)…"
        rm -rf "$libs.tmp"
        mvn -q -B -Dstyle.color=never -f "$DEPLOY/kafka/pom.xml" dependency:copy-dependencies \
            -DincludeScope=runtime -DoutputDirectory="$libs.tmp" \
            || die "mvn could not fetch the Kafka jars (see above)"
        rm -rf "$libs"
        mv "$libs.tmp" "$libs"
        echo "$sum" >"$stamp"
        say "kafka: $(ls "$libs"/*.jar | wc -l) jars ($(du -sh "$libs" | cut -f1)) in $((SECONDS - t0))s"
    fi
    render "$DEPLOY/kafka/server.properties" "$KAFKA_DIR/server.properties" "KAFKA_DATA_DIR=$KAFKA_DIR/data"
    if [[ ! -f "$KAFKA_DIR/data/meta.properties" ]]; then
        local id
        id="$("$(python_bin)" -c 'import base64, uuid
while True:
    s = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    if not s.startswith("-"):
        print(s)
        break')"
        say "formatting Kafka storage (KRaft, standalone controller, cluster id $id; first run only)…"
        if ! "$JAVA" -Xmx256m -cp "$libs/*" \
            -Dlog4j2.configurationFile="$DEPLOY/kafka/log4j2.xml" -Dkafka.logs.dir="$KAFKA_DIR/logs" \
            kafka.tools.StorageTool format --standalone -t "$id" -c "$KAFKA_DIR/server.properties" \
            >"$KAFKA_DIR/logs/format.log" 2>&1; then
            cat "$KAFKA_DIR/logs/format.log" >&2
            die "kafka: storage format failed"
        fi
    fi
}

provision_mosquitto() {
    if ! command -v mosquitto >/dev/null && [[ ! -x /usr/sbin/mosquitto ]] || ! command -v mosquitto_passwd >/dev/null; then
        apt_install mosquitto mosquitto-clients
    fi
    mkdir -p "$MOSQ_DIR/data"
    render "$DEPLOY/mosquitto/mosquitto.conf" "$MOSQ_DIR/mosquitto.conf" \
        "MOSQ_DIR=$MOSQ_DIR" "ACL_FILE=$DEPLOY/mosquitto/acl"
    local pw="$MOSQ_DIR/passwd"
    if [[ ! -s "$pw" || "$STACK/credentials.json" -nt "$pw" ]]; then
        say "mosquitto: writing the password file (gateway, worker, nurse, sim, acme, globex)"
        rm -f "$pw.tmp"
        (umask 077 && : >"$pw.tmp")
        local user pass
        while read -r user pass; do
            mosquitto_passwd -b "$pw.tmp" "$user" "$pass" || die "mosquitto_passwd failed for $user"
        done < <("$(python_bin)" "$CTL" mqtt-users "$STACK")
        chmod 600 "$pw.tmp"
        mv "$pw.tmp" "$pw"
        local pid
        if pid="$(service_pid mosquitto)"; then kill -HUP "$pid"; fi # reload accounts
    fi
}

provision_influxdb() {
    local influxd="$BIN/influxd" stamp="$BIN/.influxd.version"
    if [[ ! -x "$influxd" || ! -f "$stamp" || "$(<"$stamp")" != "$INFLUXDB_VERSION" ]]; then
        local go t0=$SECONDS
        go="$(go_bin)"
        if [[ -z "$go" ]]; then
            apt_install golang-go ca-certificates
            go="$(command -v go)"
        fi
        local ldflags=()
        # Go 1.23+ forbids the //go:linkname pulls of InfluxDB 1.8's old dependencies unless told not to
        local minor; minor="$("$go" env GOVERSION | sed -n 's/^go1\.\([0-9]*\).*/\1/p')"
        [[ -n "$minor" && "$minor" -ge 23 ]] && ldflags=(-ldflags=-checklinkname=0)
        say "building InfluxDB ${INFLUXDB_VERSION#v} (influxd) with $("$go" env GOVERSION) from the Go module proxy (first run only, 1–3 min)…"
        GOBIN="$BIN" GOFLAGS= GOTOOLCHAIN=local CGO_ENABLED="${CGO_ENABLED:-1}" \
            "$go" install "${ldflags[@]}" "$INFLUXDB_MODULE@$INFLUXDB_VERSION" \
            || die "go install $INFLUXDB_MODULE@$INFLUXDB_VERSION failed (see above)"
        echo "$INFLUXDB_VERSION" >"$stamp"
        say "influxdb: built $influxd in $((SECONDS - t0))s"
    fi
    mkdir -p "$INFLUX_DIR"
    render "$DEPLOY/influxdb/influxdb.conf" "$INFLUX_DIR/influxdb.conf" "INFLUX_DIR=$INFLUX_DIR"
}

provision() {
    case "$1" in
        kafka) provision_kafka ;;
        mosquitto) provision_mosquitto ;;
        influxdb) provision_influxdb ;;
        *) die "unknown service $1 (kafka, mosquitto, influxdb)" ;;
    esac
}

# ------------------------------------------------------------------ start / wait / stop
wait_ready() {
    local name="$1" pid="$2" timeout="$3" t0=$SECONDS cmd
    case "$name" in
        kafka) cmd=wait-kafka ;;
        mosquitto) cmd=wait-mqtt ;;
        influxdb) cmd=wait-influx ;;
    esac
    if ! "$(venv_python)" "$CTL" "$cmd" "$STACK" --pid "$pid" --timeout "$timeout"; then
        show_logs "$name" 30
        die "$name did not become ready (pid $pid; logs above; \`bash deploy/stack/stack.sh logs $name\` for more)"
    fi
    say "$name ready in $((SECONDS - t0))s (pid $pid)"
}

start_kafka() {
    ensure_java
    spawn kafka "$KAFKA_DIR/logs/kafka.out" \
        "$JAVA" "-Xms$KAFKA_HEAP" "-Xmx$KAFKA_HEAP" \
        -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
        -XX:+ExplicitGCInvokesConcurrent -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$DEPLOY/kafka/log4j2.xml" -Dkafka.logs.dir="$KAFKA_DIR/logs" \
        -cp "$KAFKA_DIR/libs/*" kafka.Kafka "$KAFKA_DIR/server.properties"
}

start_mosquitto() {
    local m; m="$(command -v mosquitto || echo /usr/sbin/mosquitto)"
    spawn mosquitto "$MOSQ_DIR/mosquitto.log" "$m" -c "$MOSQ_DIR/mosquitto.conf"
}

start_influxdb() {
    spawn influxdb "$INFLUX_DIR/influxd.log" "$BIN/influxd" run -config "$INFLUX_DIR/influxdb.conf"
}

start_service() {
    local name="$1" pid
    provision_creds
    provision "$name"
    if pid="$(service_pid "$name")"; then
        say "$name already running (pid $pid): checking it"
    else
        rm -f "$(pidfile "$name")"
        check_ports_free "$name"
        say "starting $name…"
        "start_$name"
        pid="$(<"$(pidfile "$name")")"
    fi
    case "$name" in
        kafka) wait_ready kafka "$pid" 120 ;;
        mosquitto) wait_ready mosquitto "$pid" 30 ;;
        influxdb) wait_ready influxdb "$pid" 60 ;;
    esac
}

stop_service() {
    local name="$1" pid timeout i
    case "$name" in kafka | mosquitto | influxdb) ;; *) die "unknown service $name (kafka, mosquitto, influxdb)" ;; esac
    if ! pid="$(service_pid "$name")"; then
        rm -f "$(pidfile "$name")"
        say "$name not running"
        return 0
    fi
    case "$name" in kafka) timeout=60 ;; *) timeout=20 ;; esac
    say "stopping $name (pid $pid)…"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < timeout * 10; i++)); do
        pid_alive "$pid" || break
        sleep 0.1
    done
    if pid_alive "$pid"; then
        warn "$name (pid $pid) still running after ${timeout}s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do
            pid_alive "$pid" || break
            sleep 0.1
        done
        pid_alive "$pid" && die "$name (pid $pid) survived SIGKILL"
    fi
    rm -f "$(pidfile "$name")"
    say "$name stopped"
}

status_line() {
    local name="$1" pid p ports_txt="" u
    for p in $(ports "$name"); do ports_txt+="${ports_txt:+,}127.0.0.1:$p"; done
    if pid="$(service_pid "$name")"; then
        printf '%-10s up    pid %-8s %s\n' "$name" "$pid" "$ports_txt"
    else
        u="$(port_user "$(ports "$name" | cut -d' ' -f1)")"
        if [[ -n "$u" ]]; then
            printf '%-10s down  %-12s %s (port held by a process this stack did not start: %s)\n' "$name" "-" "$ports_txt" "$u"
        else
            printf '%-10s down  %-12s %s\n' "$name" "-" "$ports_txt"
        fi
    fi
}

# one stack command at a time (a fault test restarting a service while `up` runs)
lock() {
    exec 9>"$RUN/.lock"
    if ! flock -n 9; then
        say "waiting for another stack.sh to finish…"
        flock -w 900 9 || die "timed out waiting for the stack lock ($RUN/.lock)"
    fi
}

# ------------------------------------------------------------------ main
cmd="${1:-}"
case "$cmd" in
    up)
        lock
        t0=$SECONDS
        provision_creds
        for s in "${SERVICES[@]}"; do provision "$s"; done
        for s in "${SERVICES[@]}"; do start_service "$s"; done
        say "stack up in $((SECONDS - t0))s; credentials in .stack/credentials.env"
        for s in "${SERVICES[@]}"; do status_line "$s"; done
        ;;
    down)
        lock
        for ((k = ${#SERVICES[@]} - 1; k >= 0; k--)); do stop_service "${SERVICES[k]}"; done
        ;;
    status)
        for s in "${SERVICES[@]}"; do status_line "$s"; done
        ;;
    start-service | stop-service | restart-service)
        [[ $# -eq 2 ]] || die "usage: stack.sh $cmd kafka|mosquitto|influxdb"
        case "$2" in kafka | mosquitto | influxdb) ;; *) die "unknown service $2 (kafka, mosquitto, influxdb)" ;; esac
        lock
        case "$cmd" in
            start-service) start_service "$2" ;;
            stop-service) stop_service "$2" ;;
            restart-service) stop_service "$2" && start_service "$2" ;;
        esac
        ;;
    logs)
        [[ $# -ge 2 ]] || die "usage: stack.sh logs kafka|mosquitto|influxdb [LINES]"
        show_logs "$2" "${3:-100}" 2>&1
        ;;
    *)
        sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
        [[ -z "$cmd" || "$cmd" == help || "$cmd" == -h || "$cmd" == --help ]] || exit 2
        ;;
esac
