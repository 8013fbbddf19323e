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
# generated credentials in .stack/credentials.env and .json, the stack's CA and
# server certificate in .stack/tls/) lives in .stack/.
# Provisioning is idempotent: a second `up` only checks and takes seconds; a
# service still running without a listener its configuration now has (a stack
# started before it was added) is restarted once, keeping its data.
#
# Besides the plaintext ports, Mosquitto listens with TLS on 8883 and Kafka with
# SASL_SSL (SCRAM-SHA-512, one account per service, ACLs) on 9094; both present a
# certificate for localhost/127.0.0.1 signed by .stack/tls/ca.crt.
#
# A second, private stack (to try a configuration without disturbing the shared one):
#   STACK_DIR=out/stack2 STACK_PORT_OFFSET=10000 stack.sh start-service kafka
# (every port + the offset; link out/stack2/kafka/libs to .stack/kafka/libs to reuse the jars).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DEPLOY="$ROOT/deploy"
# .stack may be a symlink to a stack shared by several checkouts of the project (git worktrees):
# its real path is what the running services carry in their command lines
STACK="$(realpath -m "${STACK_DIR:-$ROOT/.stack}")"
RUN="$STACK/run"
BIN="$STACK/bin"
KAFKA_DIR="$STACK/kafka"
MOSQ_DIR="$STACK/mosquitto"
INFLUX_DIR="$STACK/influxdb"
TLS_DIR="$STACK/tls"
CTL="$DEPLOY/stack/stackctl.py"
SERVICES=(kafka mosquitto influxdb)

INFLUXDB_MODULE="github.com/influxdata/influxdb/cmd/influxd"
INFLUXDB_VERSION="v1.8.10"
KAFKA_HEAP="${STACK_KAFKA_HEAP:-1g}"
# stackctl.py reads the same offset
export STACK_PORT_OFFSET="${STACK_PORT_OFFSET:-0}"
port() { echo $(($1 + STACK_PORT_OFFSET)); }
KAFKA_PORT=$(port 9092) KAFKA_CONTROLLER_PORT=$(port 9093) KAFKA_SASL_PORT=$(port 9094)
MQTT_PORT=$(port 1883) MQTT_TLS_PORT=$(port 8883)
INFLUX_PORT=$(port 8086) INFLUX_RPC_PORT=$(port 8088)

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

ports() { # the first one is the service's main port
    case "$1" in
        kafka) echo "$KAFKA_PORT $KAFKA_CONTROLLER_PORT $KAFKA_SASL_PORT" ;;
        mosquitto) echo "$MQTT_PORT $MQTT_TLS_PORT" ;;
        influxdb) echo "$INFLUX_PORT $INFLUX_RPC_PORT" ;;
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

# the ports a running service does not listen on although its main port is open: it was
# started before those listeners were configured (an older stack), and needs a restart
missing_listeners() {
    local name="$1" main p missing="" try
    main="$(ports "$name" | cut -d' ' -f1)"
    [[ -n "$(port_user "$main")" ]] || return 0 # still starting (or not ours): nothing to say
    for try in 1 2 3 4 5; do # a service that just opened its main port may open the others a moment later
        missing=""
        for p in $(ports "$name"); do
            [[ -n "$(port_user "$p")" ]] || missing+="${missing:+ }$p"
        done
        [[ -n "$missing" ]] || return 0
        sleep 1
    done
    echo "$missing"
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
    case "$r" in
        created) say "generated credentials into .stack/credentials.env and .stack/credentials.json (mode 600)" ;;
        added) say "added the credentials of new accounts to .stack/credentials.env and .stack/credentials.json" ;;
    esac
    return 0
}

# The stack's own certificate authority (.stack/tls/ca.crt, key ca.key) and the server certificate
# that Mosquitto (8883) and Kafka (SASL_SSL, as the PKCS12 keystore kafka.p12) present, for
# localhost and 127.0.0.1. Made at first start; the server certificate is issued again when it
# is missing, older than the CA or expires within 30 days (a running service uses the new one
# after its next restart). Keys are mode 600, the directory 700.
provision_tls() {
    command -v openssl >/dev/null || apt_install openssl
    mkdir -p "$TLS_DIR"
    chmod 700 "$TLS_DIR"
    local ca_key="$TLS_DIR/ca.key" ca_crt="$TLS_DIR/ca.crt" key="$TLS_DIR/server.key" crt="$TLS_DIR/server.crt"
    local p12="$TLS_DIR/kafka.p12" log="$TLS_DIR/openssl.log"
    if [[ ! -s "$ca_crt" || ! -s "$ca_key" ]]; then
        say "tls: creating the stack's certificate authority .stack/tls/ca.crt (first run only)"
        rm -f "$crt" "$p12"
        (umask 077 && openssl req -x509 -newkey rsa:3072 -nodes -days 3650 -sha256 \
            -subj "/O=wearwatch local stack/CN=wearwatch local stack CA" \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
            -keyout "$ca_key.tmp" -out "$ca_crt.tmp" >"$log" 2>&1) \
            || { cat "$log" >&2; die "tls: openssl could not create the CA"; }
        chmod 644 "$ca_crt.tmp"
        mv "$ca_key.tmp" "$ca_key"
        mv "$ca_crt.tmp" "$ca_crt"
    fi
    if [[ ! -s "$crt" || ! -s "$key" || "$ca_crt" -nt "$crt" ]] \
        || ! openssl x509 -checkend 2592000 -noout -in "$crt" >/dev/null 2>&1; then
        say "tls: issuing the server certificate for localhost and 127.0.0.1 (Mosquitto $MQTT_TLS_PORT, Kafka $KAFKA_SASL_PORT)"
        printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "extendedKeyUsage=serverAuth" \
            "keyUsage=critical,digitalSignature,keyEncipherment" "basicConstraints=critical,CA:FALSE" >"$TLS_DIR/server.ext"
        (umask 077 && openssl req -newkey rsa:2048 -nodes -subj "/O=wearwatch local stack/CN=localhost" \
            -keyout "$key.tmp" -out "$TLS_DIR/server.csr" >"$log" 2>&1 \
            && openssl x509 -req -in "$TLS_DIR/server.csr" -CA "$ca_crt" -CAkey "$ca_key" \
                -set_serial "0x$(openssl rand -hex 16)" -days 825 -sha256 -extfile "$TLS_DIR/server.ext" \
                -out "$crt.tmp" >>"$log" 2>&1) \
            || { cat "$log" >&2; die "tls: openssl could not issue the server certificate"; }
        chmod 644 "$crt.tmp"
        mv "$key.tmp" "$key"
        mv "$crt.tmp" "$crt"
        rm -f "$TLS_DIR/server.csr" "$TLS_DIR/server.ext" "$p12"
    fi
    if [[ ! -s "$p12" || "$crt" -nt "$p12" || "$STACK/credentials.json" -nt "$p12" ]]; then
        # the password comes through the environment, never the command line
        (umask 077 && KEYSTORE_PASSWORD="$("$(python_bin)" "$CTL" keystore-password "$STACK")" \
            openssl pkcs12 -export -name kafka -in "$crt" -inkey "$key" -certfile "$ca_crt" \
                -passout env:KEYSTORE_PASSWORD -out "$p12.tmp" >"$log" 2>&1) \
            || { cat "$log" >&2; die "tls: openssl could not write Kafka's keystore"; }
        mv "$p12.tmp" "$p12"
    fi
    rm -f "$log"
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
    provision_tls
    (umask 077 && render "$DEPLOY/kafka/server.properties" "$KAFKA_DIR/server.properties" \
        "KAFKA_DATA_DIR=$KAFKA_DIR/data" "KAFKA_PORT=$KAFKA_PORT" "KAFKA_CONTROLLER_PORT=$KAFKA_CONTROLLER_PORT" \
        "KAFKA_SASL_PORT=$KAFKA_SASL_PORT" "TLS_DIR=$TLS_DIR" \
        "KAFKA_KEYSTORE_PASSWORD=$("$(python_bin)" "$CTL" keystore-password "$STACK")")
    chmod 600 "$KAFKA_DIR/server.properties" # it holds the keystore password
    if [[ ! -f "$KAFKA_DIR/data/meta.properties" ]]; then
        local id
        id="$("$(python_bin)" -c 'import base64, uuid
while True:
    s = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    if not s.startswith("-"):
        print(s)
        break')"
        # the services' SCRAM users go into the first metadata (an older stack gets them from stackctl.py)
        local scram=() arg
        while read -r arg; do scram+=(--add-scram "$arg"); done < <("$(python_bin)" "$CTL" scram-args "$STACK")
        say "formatting Kafka storage (KRaft, standalone controller, cluster id $id, $((${#scram[@]} / 2)) SCRAM users; first run only)…"
        if ! "$JAVA" -Xmx256m -cp "$libs/*" \
            -Dlog4j2.configurationFile="$DEPLOY/kafka/log4j2.xml" -Dkafka.logs.dir="$KAFKA_DIR/logs" \
            kafka.tools.StorageTool format --standalone -t "$id" -c "$KAFKA_DIR/server.properties" "${scram[@]}" \
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
    provision_tls
    render "$DEPLOY/mosquitto/mosquitto.conf" "$MOSQ_DIR/mosquitto.conf" \
        "MOSQ_DIR=$MOSQ_DIR" "ACL_FILE=$DEPLOY/mosquitto/acl" "TLS_DIR=$TLS_DIR" \
        "MQTT_PORT=$MQTT_PORT" "MQTT_TLS_PORT=$MQTT_TLS_PORT"
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
    render "$DEPLOY/influxdb/influxdb.conf" "$INFLUX_DIR/influxdb.conf" "INFLUX_DIR=$INFLUX_DIR" \
        "INFLUX_PORT=$INFLUX_PORT" "INFLUX_RPC_PORT=$INFLUX_RPC_PORT"
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
    local missing=""
    if pid="$(service_pid "$name")"; then
        missing="$(missing_listeners "$name")"
    fi
    if [[ -n "$missing" ]]; then
        say "$name (pid $pid) does not listen on $missing, which its configuration now has (it started before): restarting it, data kept"
        stop_service "$name"
    fi
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
        sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'
        [[ -z "$cmd" || "$cmd" == help || "$cmd" == -h || "$cmd" == --help ]] || exit 2
        ;;
esac
