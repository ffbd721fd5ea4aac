#!/usr/bin/env bash
# The golden tests against the real Debezium: crates/outboxd/tests/debezium.rs.
#
#   scripts/test-debezium.sh [extra cargo test args…]
#
# Resolves Kafka Connect 4.3.1, Debezium 3.7.0.Final and the OpenTelemetry SDK from
# Maven Central (bench/connect/setup.sh, cached in bench/.work/connect), starts ONE
# Kafka Connect worker (standalone, REST on a free port, the OpenTelemetry SDK on its
# classpath as Debezium's tracing documentation describes) on the PostgreSQL and
# Kafka of OUTBOXD_TEST_PG_URL / OUTBOXD_TEST_KAFKA_BROKERS (else scripts/pg.sh and
# scripts/kafka.sh's, started if needed), runs the tests, each with connectors of its
# own on that worker, and stops the worker. Installs a JDK and maven with apt-get
# when missing (as root).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

log() { printf 'test-debezium: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

apt_install() {
    [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null ||
        die "missing $*; install it (e.g. 'sudo apt-get install $*')"
    log "installing $* with apt-get"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}

started=$(date +%s)
scripts/deps.sh
command -v java >/dev/null || apt_install openjdk-17-jdk-headless
command -v mvn >/dev/null || apt_install maven
CONNECT_DIR=$(bench/connect/setup.sh --with-otel)

if [[ -z ${OUTBOXD_TEST_PG_URL:-} ]]; then
    scripts/pg.sh start
    eval "$(scripts/pg.sh env)"
fi
if [[ -z ${OUTBOXD_TEST_KAFKA_BROKERS:-} ]]; then
    scripts/kafka.sh start
    eval "$(scripts/kafka.sh env)"
fi

free_port() {
    local port
    for ((port = 18400 + RANDOM % 1000; ; port++)); do
        (: </dev/tcp/127.0.0.1/"$port") 2>/dev/null || { echo "$port"; return; }
    done
}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/outboxd-connect.XXXXXX")
PORT=$(free_port)
cat >"$WORK/worker.properties" <<EOF
bootstrap.servers=$OUTBOXD_TEST_KAFKA_BROKERS
key.converter=org.apache.kafka.connect.storage.StringConverter
value.converter=org.apache.kafka.connect.storage.StringConverter
offset.storage.file.filename=$WORK/offsets.dat
offset.flush.interval.ms=1000
plugin.path=$CONNECT_DIR/plugins
listeners=http://127.0.0.1:$PORT
EOF
cat >"$WORK/log4j2.properties" <<EOF
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = $WORK/connect.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
EOF

# OpenTelemetry: the SDK configures itself from these properties; no exporter (the
# tests read the propagated context from the records' headers).
java -Xms128m -Xmx1g -XX:+UseSerialGC -Djava.awt.headless=true \
    -Dotel.java.global-autoconfigure.enabled=true -Dotel.service.name=debezium-golden \
    -Dotel.traces.exporter=none -Dotel.metrics.exporter=none -Dotel.logs.exporter=none \
    -Dotel.propagators=tracecontext \
    -Dlog4j2.configurationFile="$WORK/log4j2.properties" \
    -cp "$CONNECT_DIR/lib/*:$CONNECT_DIR/otel/*" org.apache.kafka.connect.cli.ConnectStandalone \
    "$WORK/worker.properties" >"$WORK/console.log" 2>&1 &
WORKER=$!
cleanup() {
    # The worker ends by the signal; its status must not become the script's.
    if kill "$WORKER" 2>/dev/null; then wait "$WORKER" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

deadline=$((SECONDS + 120))
until curl -fsS "http://127.0.0.1:$PORT/connector-plugins" 2>/dev/null | grep -q PostgresConnector; do
    kill -0 "$WORKER" 2>/dev/null || { tail -n 40 "$WORK/console.log" "$WORK/connect.log" >&2; die "the Connect worker exited"; }
    ((SECONDS < deadline)) || die "the Connect worker did not start within 120 s"
    sleep 1
done
log "Kafka Connect with Debezium at http://127.0.0.1:$PORT ($(($(date +%s) - started)) s)"

export OUTBOXD_TEST_CONNECT_URL="http://127.0.0.1:$PORT"
export OUTBOXD_TEST_OTEL_CLASSPATH="$CONNECT_DIR/otel/*"
rc=0
cargo test -p outboxd --locked --test debezium -- --ignored --test-threads 6 "$@" || rc=$?
if [[ $rc -ne 0 ]]; then
    log "the worker's log, last lines:"
    grep -E "ERROR|Exception" "$WORK/connect.log" | tail -n 20 >&2 || true
fi
log "done in $(($(date +%s) - started)) s"
exit "$rc"
