#!/usr/bin/env bash
# Generate .env, the Mosquitto password file and a self-signed TLS chain for
# docker-compose. Run once from the repository root: bash deploy/compose/make-secrets.sh
# Replace the self-signed certificate with your own CA's for a real deployment.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -e .env ] && { echo ".env exists; remove it first to regenerate" >&2; exit 1; }
rnd() { openssl rand -hex 24; }
declare -A pw=([gateway]=$(rnd) [worker]=$(rnd) [nurse]=$(rnd) [sim]=$(rnd))
umask 077
cat > .env <<ENV
INFLUX_ADMIN_PASSWORD=$(rnd)
INFLUX_TOKEN=$(rnd)
PSEUDONYM_KEY=$(rnd)
DATA_KEY_SECRET=$(openssl rand -base64 32)
CONSOLE_SECRET=$(rnd)$(rnd)
GRAFANA_ADMIN_PASSWORD=$(rnd)
MQTT_GATEWAY_PASSWORD=${pw[gateway]}
MQTT_WORKER_PASSWORD=${pw[worker]}
MQTT_SIM_PASSWORD=${pw[sim]}
MQTT_NURSE_PASSWORD=${pw[nurse]}
MQTT_PASSWORD_FILE=./deploy/compose/passwd
MQTT_TLS_DIR=./deploy/compose/tls
ENV
: > deploy/compose/passwd
for user in "${!pw[@]}"; do
  docker run --rm -v "$PWD/deploy/compose:/w" eclipse-mosquitto:2.0 \
    mosquitto_passwd -b /w/passwd "$user" "${pw[$user]}"
done
mkdir -p deploy/compose/tls && cd deploy/compose/tls
openssl req -x509 -newkey rsa:3072 -nodes -days 365 -subj "/CN=wearwatch-ca" -keyout ca.key -out ca.crt
openssl req -newkey rsa:3072 -nodes -subj "/CN=mosquitto" -keyout server.key -out server.csr
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 365 -out server.crt
echo "wrote .env, deploy/compose/passwd and deploy/compose/tls/ (add vendor accounts with mosquitto_passwd)"
